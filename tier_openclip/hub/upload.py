"""`push`'s upload to the Hugging Face Hub. The token comes from huggingface_hub (``HF_TOKEN`` or
``hf auth login``); it is never printed or written."""

from __future__ import annotations

from pathlib import Path

from tier_openclip.errors import CommandError, UsageError


def hub_token() -> str:
    """The token huggingface_hub finds (HF_TOKEN or `hf auth login`), or UsageError saying how to log in."""
    import huggingface_hub

    token = huggingface_hub.get_token()
    if not token:
        raise UsageError("no Hugging Face token found; set HF_TOKEN or run `hf auth login` "
                         "(or use --local-dir to only write the folder)")
    return token


def upload(folder: str | Path, repo_id: str, private: bool = False, commit_message: str = "Add model") -> str:
    """Create the repo if needed and upload the folder; returns the commit URL. The token comes from
    huggingface_hub (HF_TOKEN or `hf auth login`) and stays in memory. CommandError when the Hub
    cannot be reached or refuses the upload."""
    import huggingface_hub

    api = huggingface_hub.HfApi(token=hub_token())
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(folder),
                                   commit_message=commit_message)
    except Exception as exc:  # noqa: BLE001 -- httpx/requests network errors, HfHubHTTPError, ...
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise CommandError(f"uploading to https://huggingface.co/{repo_id} failed ({type(exc).__name__}"
                           f"{': ' + detail if detail else ''}); nothing was published unless the Hub says "
                           "otherwise. Check the network and run the same command again, or write the folder with "
                           "--local-dir and upload it later with `hf upload`") from None
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
