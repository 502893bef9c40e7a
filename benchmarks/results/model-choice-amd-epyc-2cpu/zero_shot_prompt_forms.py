import sys, csv, torch, numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score
torch.set_num_threads(2)
from tier_openclip.models import load_model
L = load_model(sys.argv[1], sys.argv[2]); D = sys.argv[3] if len(sys.argv) > 3 else '/work/demo-final/data/test_eval/'
rows = list(csv.DictReader(open(D + 'labels.csv')))
labels = [k for k in rows[0] if k != 'image']
with torch.no_grad():
    ims = torch.stack([L.preprocess(Image.open(D + r['image'])) for r in rows])
    f = L.model.encode_image(ims, normalize=True)
    for lab in labels:
        y = np.array([float(r[lab]) for r in rows])
        t = L.model.encode_text(L.tokenizer([lab + '.', 'no ' + lab + '.', 'there is ' + lab + '.']), normalize=True)
        s = (f @ t.T).numpy()
        print(lab, 'pos-only', round(roc_auc_score(y, s[:, 0]), 3), 'neg-only(-)', round(roc_auc_score(y, -s[:, 1]), 3), 'pos-neg', round(roc_auc_score(y, s[:, 0] - s[:, 1]), 3), 'there is', round(roc_auc_score(y, s[:, 2]), 3))
