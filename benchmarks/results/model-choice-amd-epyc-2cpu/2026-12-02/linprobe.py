import sys, numpy as np, torch, csv
from PIL import Image
torch.set_num_threads(2)
from tier_openclip.models import load_model
from tier_openclip.features import token_features
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.metrics import roc_auc_score
L = load_model(sys.argv[1], sys.argv[2]); d = sys.argv[3] + "/test_eval"
rows = list(csv.DictReader(open(d + "/labels.csv")))
X = torch.stack([L.preprocess(Image.open(d + "/" + r["image"]).convert("RGB")) for r in rows])
with torch.no_grad():
    f = token_features(L.model, images=X)["image_features"].numpy()
px = X[:, 0].reshape(len(X), -1).numpy()
for name in [k for k in rows[0] if k != "image"]:
    y = np.array([int(float(r[name])) for r in rows])
    p = cross_val_predict(LogisticRegression(C=1.0, max_iter=2000), f, y, cv=5, method="predict_proba")[:, 1]
    q = cross_val_predict(LogisticRegression(C=0.01, max_iter=2000), px, y, cv=5, method="predict_proba")[:, 1]
    print(name, "feat-probe AUC", round(roc_auc_score(y, p), 3), "pixel-probe", round(roc_auc_score(y, q), 3), "pos", y.sum())
