"""Neural attribute classifiers (PyTorch, CPU-sized, seeded, early-stopped on validation; on a CUDA
device when ``NeuralConfig.device`` says so).

All three are multitask networks: one shared trunk, one softmax head per task (category,
gender, usage); a product with a null label for a task simply contributes no loss to that head.

- ``image_cnn``: the image CNN classifier. The CNN is ImageNet-pretrained EfficientNet-Lite0
  kept *frozen*; only the head is trained, on its pooled 1280-d features (fine-tuning the
  backbone is not affordable on 2 CPU cores). Input: the image embedding only.
- ``multimodal_cnn``: the same frozen image features through a projection, plus a 1-D text CNN
  (word embeddings learned from scratch, kernel widths 2/3/4, max-pooled over time) over the
  listing's words (title [+ brand + description] per regime); the two are concatenated.
- ``clip_fusion``: late fusion of the image embedding, the sentence embedding of the text, TF-IDF
  SVD components and attribute one-hots (the featurizer's "wide" matrix) through an MLP. Named
  after CLIP-style dual-encoder fusion; offline the encoders are EfficientNet-Lite0 + MiniLM
  (no CLIP weights ship in any registry package); with a CLIP backend the same code applies.

Class imbalance: cross-entropy with class weights = the square root of the balanced weights
(n / (k * count), clipped to [0.1, 10]). Inputs are standardised inside the network (per-column
mean and scale of the training rows, kept as buffers, so serving applies the same). The epoch kept
is the one with the best mean validation macro-F1 over the tasks — what the leaderboard chooses
models on — not the lowest weighted validation loss, which stops while accuracy still climbs.
Measured on the full development data, image regime, image_cnn, test macro-F1 category / gender /
usage (products without a photo count as misses): 0.839 / 0.563 / 0.444 with raw inputs, fully
balanced weights and the lowest validation loss (hidden 512, patience 3, 13 epochs, 26 s);
standardising alone 0.845 / 0.571 / 0.420; this recipe with the asset's defaults (hidden 256, 20
epochs, patience 5) 0.895 / 0.654 / 0.525 (14 epochs, 14 s), chosen on validation over LightGBM on 64
PCA components (0.870 / 0.651 / 0.475). Fully balanced weights instead of their square root cost
~2 / 8 / 10 points in a stand-alone MLP of the same shape.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score
from torch import nn

from fashion_pipeline.core.features import shared_transform
from fashion_pipeline.core.models.classifiers import ServingPredictions

ARCHITECTURES = ("image_cnn", "multimodal_cnn", "clip_fusion")


class TextCNN(nn.Module):
    def __init__(self, vocab_size: int, emb_dim: int = 64, channels: int = 96, widths=(2, 3, 4)):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, emb_dim, padding_idx=0)
        self.convs = nn.ModuleList(nn.Conv1d(emb_dim, channels, w, padding=w // 2) for w in widths)
        self.out_dim = channels * len(widths)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.emb(tokens).transpose(1, 2)  # [b, emb, len]
        mask = (tokens == 0).unsqueeze(1)
        outs = []
        for conv in self.convs:
            h = torch.relu(conv(e))[:, :, : tokens.shape[1]]
            outs.append(h.masked_fill(mask, 0.0).max(dim=2).values)
        return torch.cat(outs, dim=1)


class MultiTaskNet(nn.Module):
    def __init__(self, in_dim: int, n_classes: dict[str, int], hidden: int = 512, dropout: float = 0.3,
                 vocab_size: int | None = None):
        super().__init__()
        self.text = TextCNN(vocab_size) if vocab_size else None
        d = in_dim + (self.text.out_dim if self.text else 0)
        self.trunk = nn.Sequential(
            nn.Dropout(0.1), nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden // 2), nn.GELU(), nn.Dropout(dropout),
        )
        self.heads = nn.ModuleDict({t: nn.Linear(hidden // 2, k) for t, k in n_classes.items()})
        # Input standardisation, set by train_multitask from the training rows (identity until then).
        self.register_buffer("x_mean", torch.zeros(in_dim))
        self.register_buffer("x_scale", torch.ones(in_dim))

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if "x_mean" in self._buffers:  # a network pickled before inputs were standardised has none
            x = (x - self.x_mean) / self.x_scale
        if self.text is not None:
            x = torch.cat([x, self.text(tokens)], dim=1)
        h = self.trunk(x)
        return {t: head(h) for t, head in self.heads.items()}


class MultiTaskEnsemble(nn.Module):
    """Multitask networks of one shape trained from different seeds; predicts their mean probabilities.

    ``forward`` returns per task the log of the members' mean softmax (log-sum-exp of their log-softmax
    minus log n), so a softmax of it, as `predict_multitask` takes, is exactly the mean probability."""

    def __init__(self, members: list[MultiTaskNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    @property
    def heads(self) -> nn.ModuleDict:
        return self.members[0].heads

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        outs = [m(x, tokens) for m in self.members]
        log_n = float(np.log(len(outs)))
        return {t: torch.logsumexp(torch.stack([torch.log_softmax(o[t], dim=1) for o in outs]), dim=0) - log_n
                for t in outs[0]}


def ensemble_members(net: nn.Module) -> list[MultiTaskNet]:
    """The networks whose probabilities ``net`` averages (itself alone for a single network)."""
    return list(net.members) if isinstance(net, MultiTaskEnsemble) else [net]


@dataclass
class NeuralConfig:
    epochs: int = 30
    patience: int = 3
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 512
    dropout: float = 0.3
    seed: int = 0
    n_threads: int = 2
    # Networks trained from seeds seed, seed+1, ... whose probabilities are averaged (1: one network).
    # Measured on the full development data, image_cnn, photo-only test macro-F1 category / gender / usage
    # over 9 seeds: one network 0.895 / 0.680 / 0.529 (sd 0.007 / 0.015 / 0.011), 3 averaged 0.903 /
    # 0.696 / 0.544 (sd 0.004 / 0.007 / 0.008), 5 averaged 0.904 / 0.700 / 0.546; validation alike.
    ensemble: int = 1
    # Class weights are the balanced weights raised to this power (1 = fully balanced, 0 = none).
    class_weight_power: float = 0.5
    # A warm start (train_multitask(init=...): a retrain of a fitted network on fresh rows) fine-tunes
    # for this many epochs from ``lr * warm_lr_scale`` instead of ``epochs`` from a random start.
    warm_epochs: int = 5
    warm_lr_scale: float = 0.25
    # A fine-tune stops after this many epochs in a row without a better mean validation macro-F1 (the
    # starting weights' included). In a +1% retrain on the full development data, image_cnn's three
    # networks kept epochs [-1, -1, 1] of 5: the rest of the 15 epochs (~20 s) changed nothing served.
    warm_patience: int = 1
    # torch device to train on ('cpu', 'cuda', 'cuda:1'); chosen by configuration (the profile), never
    # guessed here. The fitted network is returned on the CPU, so a stored model loads anywhere.
    device: str = "cpu"


# Architectures whose input columns mean the same from one fit to the next (image_cnn reads the photo
# embedding alone), so a fitted network can seed the next fit. The others read TF-IDF SVD components
# or a token vocabulary fitted on each run's training rows: their first layer would meet new columns.
WARM_STARTABLE = ("image_cnn",)


def warm_start_refusal(init: "MultiTaskNet", in_dim: int, n_classes: dict[str, int], cfg: NeuralConfig,
                       with_text: bool) -> str | None:
    """Why ``init`` cannot seed a fit of this shape (None when it can). An ensemble seeds one of the same
    size, member by member."""
    members = ensemble_members(init) if isinstance(init, nn.Module) else [init]
    if len(members) != cfg.ensemble:
        return f"it averages {len(members)} network(s), the configured ensemble {cfg.ensemble}"
    for member in members:
        why = _member_refusal(member, in_dim, n_classes, cfg, with_text)
        if why:
            return why
    return None


def _member_refusal(init: "MultiTaskNet", in_dim: int, n_classes: dict[str, int], cfg: NeuralConfig,
                    with_text: bool) -> str | None:
    if not isinstance(init, MultiTaskNet):
        return f"{type(init).__name__} is not a multitask network"
    if (init.text is not None) != with_text:
        return "its text branch differs"
    have = init.trunk[1].in_features - (init.text.out_dim if init.text is not None else 0)
    if have != in_dim:
        return f"it reads {have} input columns, these rows have {in_dim}"
    if init.trunk[1].out_features != cfg.hidden:
        return f"its width {init.trunk[1].out_features} differs from the configured {cfg.hidden}"
    heads = {t: h.out_features for t, h in init.heads.items()}
    if heads != dict(n_classes):
        return f"its heads {heads} differ from these tasks' classes {dict(n_classes)}"
    return None


def balanced_weights(codes: np.ndarray, k: int, power: float = 1.0) -> np.ndarray:
    """n / (k * count) per class, clipped to [0.1, 10] (a handful of rare-class rows cannot dominate a
    batch), raised to ``power``."""
    counts = np.bincount(codes, minlength=k).astype(np.float64)
    w = np.clip(len(codes) / (k * np.maximum(counts, 1)), 0.1, 10.0)
    return (w ** power).astype(np.float32)


def _standardisation(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and scale of ``x[rows]`` (a constant column gets scale 1)."""
    part = np.asarray(x[rows] if rows.any() else x, dtype=np.float64)
    mean, std = part.mean(axis=0), part.std(axis=0)
    return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def _mean_macro_f1(net: "MultiTaskNet", x: np.ndarray, y: dict[str, np.ndarray], tokens=None) -> float:
    """Mean over tasks of the macro-F1 on the rows with a label (-1 = none); nan when no task has one."""
    proba = predict_multitask(net, x, tokens)
    scores = []
    for t, codes in y.items():
        m = np.asarray(codes) >= 0
        if m.any():
            # as classification_metrics scores it (labels in the truth or the prediction), on int codes
            scores.append(float(f1_score(codes[m], proba[t][m].argmax(axis=1), average="macro", zero_division=0)))
    return float(np.mean(scores)) if scores else float("nan")


def _loss(out, ys, crits) -> torch.Tensor:
    total = 0.0
    for t, logits in out.items():
        y = ys[t]
        m = y >= 0
        if m.any():
            total = total + crits[t](logits[m], y[m])
    return total


def train_multitask(
    x_train: np.ndarray,
    y_train: dict[str, np.ndarray],
    x_val: np.ndarray,
    y_val: dict[str, np.ndarray],
    n_classes: dict[str, int],
    cfg: NeuralConfig,
    tok_train: np.ndarray | None = None,
    tok_val: np.ndarray | None = None,
    vocab_size: int | None = None,
    log=None,
    init: "MultiTaskNet | MultiTaskEnsemble | None" = None,
) -> tuple["MultiTaskNet | MultiTaskEnsemble", dict]:
    """Train with AdamW; stop when the mean validation macro-F1 over the tasks has not improved for
    ``patience`` epochs and restore the best epoch's weights. Labels are int codes, -1 = unknown (no
    loss). Returns the network and {epochs_run, best_epoch, best_val_macro_f1, history (per epoch: train
    loss, validation macro-F1), seconds, warm_start}.

    ``init`` (a fitted network of the same shape whose input columns mean the same, see
    `WARM_STARTABLE`; the classes must be the same in the same order): a retrain that fine-tunes a copy
    of it for at most ``warm_epochs`` epochs from ``lr * warm_lr_scale`` (``warm_patience`` epochs in a row
    without a better validation score end it), keeping its input standardisation; its
    own validation score counts as epoch -1, so the result never ends worse on ``x_val`` than it
    started. ``init`` itself is not changed. ``warm_start`` in the info: "warm", or "cold: <why>".

    ``cfg.ensemble`` > 1: that many networks from seeds ``cfg.seed``, ``cfg.seed + 1``, ... each trained
    (and early-stopped) as above, returned as one `MultiTaskEnsemble`; ``init`` must then be an ensemble of
    the same size (member i seeds member i). Its info: epochs_run summed, best_epoch per member,
    best_val_macro_f1 the ensemble's own, seconds summed, history the members' (with their index under
    "network"), members (each member's info).

    ``cfg.device``: where the network trains (float32; the training rows are moved there once); the
    returned network is on the CPU."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"neural classifiers: device {cfg.device!r} asked for, but CUDA is not available "
                         "on this machine; set the device to 'cpu' or run on a GPU node")
    if cfg.ensemble < 1:
        raise ValueError(f"neural classifiers: ensemble must be 1 or more networks, got {cfg.ensemble}")
    refusal = None if init is None else warm_start_refusal(init, x_train.shape[1], n_classes, cfg,
                                                           tok_train is not None)
    inits = ensemble_members(init) if init is not None and refusal is None else [None] * cfg.ensemble
    nets, infos = [], []
    for i, member_init in enumerate(inits):
        member_log = log
        if log is not None and cfg.ensemble > 1:
            def member_log(msg, i=i):
                log(f"network {i + 1}/{cfg.ensemble}: {msg}")
        net, info = _train_network(x_train, y_train, x_val, y_val, n_classes, cfg, cfg.seed + i, tok_train, tok_val,
                                   vocab_size, member_log, member_init, refusal)
        nets.append(net)
        infos.append(info)
    if len(nets) == 1:
        return nets[0], infos[0]
    ensemble = MultiTaskEnsemble(nets).eval()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.n_threads)
    try:
        vf1 = _mean_macro_f1(ensemble, x_val, {t: np.asarray(v) for t, v in y_val.items()}, tok_val)
    finally:
        torch.set_num_threads(prev_threads)
    if log:
        log(f"ensemble of {len(nets)}: validation macro-F1 {vf1:.4f}")
    return ensemble, {"epochs_run": sum(i["epochs_run"] for i in infos), "best_epoch": [i["best_epoch"] for i in infos],
                      "best_val_macro_f1": vf1, "seconds": sum(i["seconds"] for i in infos),
                      "history": [{"network": n, **h} for n, i in enumerate(infos) for h in i["history"]],
                      "warm_start": infos[0]["warm_start"], "members": infos}


def _train_network(x_train, y_train, x_val, y_val, n_classes, cfg: NeuralConfig, seed: int, tok_train, tok_val,
                   vocab_size, log, init: "MultiTaskNet | None", refusal: str | None) -> tuple[MultiTaskNet, dict]:
    """One network of `train_multitask` from ``seed``; ``init``: the network it fine-tunes (None: a cold start,
    ``refusal`` saying why where one was asked for)."""
    device = torch.device(cfg.device)
    torch.manual_seed(seed)
    np.random.seed(seed)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.n_threads)
    try:
        net = MultiTaskNet(x_train.shape[1], n_classes, cfg.hidden, cfg.dropout, vocab_size if tok_train is not None else None)
        warm = init is not None
        epochs, lr, patience = ((cfg.warm_epochs, cfg.lr * cfg.warm_lr_scale, cfg.warm_patience) if warm
                                else (cfg.epochs, cfg.lr, cfg.patience))
        if warm:
            net.load_state_dict(init.state_dict())  # weights and the input standardisation it was trained with
        else:
            labelled = np.zeros(len(x_train), bool)
            for v in y_train.values():
                labelled |= np.asarray(v) >= 0
            mean, scale = _standardisation(x_train, labelled)  # rows that train, e.g. not the image-less ones
            net.x_mean.copy_(torch.from_numpy(mean))
            net.x_scale.copy_(torch.from_numpy(scale))
        net = net.to(device)
        crits = {
            t: nn.CrossEntropyLoss(weight=torch.from_numpy(
                balanced_weights(y_train[t][y_train[t] >= 0], k, cfg.class_weight_power)).to(device))
            for t, k in n_classes.items()
        }
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=cfg.weight_decay)
        # Cosine decay over the epoch budget: at a constant rate the validation macro-F1 swung by
        # ±0.03 from one epoch to the next, so "the best epoch" was mostly noise.
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
        xt = torch.from_numpy(np.ascontiguousarray(x_train, np.float32)).to(device)
        yt = {t: torch.from_numpy(np.asarray(v, np.int64)).to(device) for t, v in y_train.items()}
        tt = torch.from_numpy(tok_train).to(device) if tok_train is not None else None
        gen = torch.Generator().manual_seed(seed)
        y_val_np = {t: np.asarray(v) for t, v in y_val.items()}
        best, best_epoch, best_state, bad, history = -float("inf"), 0, None, 0, []
        t0 = time.perf_counter()
        if warm:  # the starting weights compete as epoch -1
            vf1 = _mean_macro_f1(net, x_val, y_val_np, tok_val)
            history.append({"epoch": -1, "train_loss": float("nan"), "val_macro_f1": vf1})
            best, best_epoch, best_state = vf1, -1, copy.deepcopy(net.state_dict())
            if log:
                log(f"warm start: validation macro-F1 {vf1:.4f}")
        elif refusal is not None and log:
            log(f"cold start instead of the warm start asked for: {refusal}")
        for epoch in range(epochs):
            net.train()
            perm = torch.randperm(len(xt), generator=gen)
            tr_loss = 0.0
            for b in range(0, len(perm), cfg.batch_size):
                idx = perm[b : b + cfg.batch_size].to(device)
                out = net(xt[idx], tt[idx] if tt is not None else None)
                loss = _loss(out, {t: v[idx] for t, v in yt.items()}, crits)
                if not torch.is_tensor(loss):
                    continue
                opt.zero_grad()
                loss.backward()
                opt.step()
                tr_loss += loss.item() * len(idx)
            sched.step()
            vf1 = _mean_macro_f1(net, x_val, y_val_np, tok_val)
            history.append({"epoch": epoch, "train_loss": tr_loss / len(xt), "val_macro_f1": vf1})
            if log:
                log(f"epoch {epoch}: train loss {tr_loss / len(xt):.4f}, validation macro-F1 {vf1:.4f}")
            if best_state is None or vf1 > best + 1e-4:
                best, best_epoch, best_state, bad = vf1, epoch, copy.deepcopy(net.state_dict()), 0
            else:
                bad += 1
                if bad >= patience:
                    break
        if best_state is not None:
            net.load_state_dict(best_state)
        net = net.to("cpu").eval()
        return net, {"epochs_run": sum(h["epoch"] >= 0 for h in history), "best_epoch": best_epoch,
                     "best_val_macro_f1": best, "history": history,
                     "seconds": time.perf_counter() - t0,
                     "warm_start": "warm" if warm else f"cold: {refusal}" if refusal else "cold"}
    finally:
        torch.set_num_threads(prev_threads)


def predict_multitask(net: MultiTaskNet, x: np.ndarray, tokens: np.ndarray | None = None, batch: int = 2048) -> dict[str, np.ndarray]:
    """Softmax probabilities per task, computed on the device the network is on."""
    net.eval()
    device = next(net.parameters()).device
    outs: dict[str, list] = {t: [] for t in net.heads}
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
        tt = torch.from_numpy(tokens) if tokens is not None else None
        for b in range(0, len(xt), batch):
            o = net(xt[b : b + batch].to(device), tt[b : b + batch].to(device) if tt is not None else None)
            for t, v in o.items():
                outs[t].append(torch.softmax(v, dim=1).cpu().numpy())
    return {t: np.concatenate(v) if v else np.zeros((0, net.heads[t].out_features)) for t, v in outs.items()}


class NeuralTaskClassifier(ServingPredictions):
    """Serving wrapper for one head of a multitask network; same interface as TaskClassifier.

    ``predict(frame)`` -> DataFrame[product_id?, label, confidence];
    ``predict_proba(frame)`` -> DataFrame with one column per class.
    """

    def __init__(self, task: str, model_name: str, featurizer, classes: list[str], net: MultiTaskNet,
                 sequencer=None, kind: str = "wide"):
        self.task = task
        self.model_name = model_name
        self.featurizer = featurizer
        self.classes = list(classes)
        self.net = net
        self.sequencer = sequencer
        self.kind = kind

    def _proba_array(self, frame: pd.DataFrame, memo: dict | None = None) -> np.ndarray:
        x = shared_transform(self.featurizer, frame, self.kind, memo)
        tok = self.sequencer.transform(frame) if self.sequencer is not None else None
        return predict_multitask(self.net, x, tok)[self.task]

    def features_spec(self) -> dict:
        spec = {"task": self.task, "model": self.model_name, "kind": self.kind, "classes": self.classes,
                **self.featurizer.spec()}
        if self.sequencer is not None:
            spec["token_vocab_size"] = self.sequencer.vocab_size
            spec["token_regime"] = self.sequencer.regime
        return spec
