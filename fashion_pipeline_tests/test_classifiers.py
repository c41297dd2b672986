"""Classifier leaderboard on a tiny real subset: metrics recomputed independently, no leaks,
and the serving classifier's predict interface (incl. a pickle round trip)."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from fashion_pipeline.core.features import with_embeddings
from fashion_pipeline.core.models.fusion import NeuralConfig
from fashion_pipeline.core.models.leaderboard import LeaderboardConfig, run_leaderboard
from fashion_pipeline_tests.fixtures.real_products import (real_products_with_embeddings,
                                                          real_products_with_image_embeddings)

TASKS = ("category", "gender", "usage")


@pytest.fixture(scope="module")
def frame():
    df, image, text = real_products_with_embeddings()
    return with_embeddings(df, df["product_id"].tolist(), image, text)


def _cfg(**kw):
    base = dict(tasks=TASKS, regimes=("full", "image"), classical=("linear_svc", "complement_nb", "lightgbm"),
                neural=("clip_fusion", "image_cnn"), neural_config=NeuralConfig(epochs=3, patience=2, hidden=64),
                featurizer=dict(svd_components=16, image_components=16, text_components=8))
    base.update(kw)
    return LeaderboardConfig(**base)


@pytest.fixture(scope="module")
def result(frame):
    return run_leaderboard(frame, _cfg())


def test_leaderboard_metrics_match_an_independent_recount(frame, result):
    lb = result.leaderboard
    test = frame[frame["split"] == "test"]
    for (task, model, regime), pred in result.test_predictions.items():
        # the evaluated rows are exactly the labelled test rows
        expected_ids = test.loc[test[task].notna(), "product_id"].tolist()
        assert pred["product_id"].tolist() == expected_ids
        truth = test.set_index("product_id").loc[pred["product_id"], task].astype(str).to_numpy()
        assert (pred["y_true"].to_numpy() == truth).all()
        for source in ("all", "kaggle", "hm"):
            part = pred if source == "all" else pred[pred["source"] == source]
            row = lb[(lb.task == task) & (lb.model == model) & (lb.regime == regime) & (lb.source == source)]
            if len(part) == 0:
                assert row.empty or row["n"].iloc[0] == 0
                continue
            assert len(row) == 1
            acc = sum(a == b for a, b in zip(part["y_true"], part["y_pred"])) / len(part)
            assert row["n"].iloc[0] == len(part)
            assert row["accuracy"].iloc[0] == pytest.approx(acc)
            # macro-F1 by hand: mean over labels present in truth or prediction
            labels = sorted(set(part["y_true"]) | set(part["y_pred"]))
            f1s = []
            for lab in labels:
                tp = ((part.y_true == lab) & (part.y_pred == lab)).sum()
                fp = ((part.y_true != lab) & (part.y_pred == lab)).sum()
                fn = ((part.y_true == lab) & (part.y_pred != lab)).sum()
                f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
            assert row["macro_f1"].iloc[0] == pytest.approx(np.mean(f1s))


def test_leaderboard_covers_every_model_regime_and_counts_null_labels(frame, result):
    lb = result.leaderboard
    got = set(map(tuple, lb[lb.source == "all"][["task", "model", "regime"]].to_numpy()))
    want = {(t, m, r) for t in TASKS for m in ("linear_svc", "complement_nb", "lightgbm") for r in ("full", "image")}
    want |= {(t, "clip_fusion", "full") for t in TASKS} | {(t, "image_cnn", "image") for t in TASKS}
    assert got == want
    counts = result.label_counts.set_index(["task", "split"])
    n_usage_null_test = int(frame.loc[frame.split == "test", "usage"].isna().sum())
    assert n_usage_null_test > 0  # H&M rows have no usage: they must be counted, not scored
    assert counts.loc[("usage", "test"), "excluded_null_label"] == n_usage_null_test
    assert (lb[(lb.task == "usage") & (lb.source == "hm")]["n"] == 0).all() or lb[
        (lb.task == "usage") & (lb.source == "hm")].empty
    # one serving model per task and regime, flagged in the table
    assert set(result.serving) == {(t, r) for t in TASKS for r in ("full", "image")}
    flagged = lb[lb.serving & (lb.source == "all")].groupby(["task", "regime"]).size()
    assert (flagged == 1).all() and len(flagged) == 6


def test_test_labels_never_influence_training(frame):
    """Scrambling every test label must leave the fitted models' predictions unchanged."""
    cfg = _cfg(regimes=("full",), classical=("linear_svc",), neural=("clip_fusion",))
    a = run_leaderboard(frame, cfg)
    scrambled = frame.copy()
    test = scrambled["split"] == "test"
    for t in TASKS:
        vals = scrambled.loc[test, t].to_numpy()
        scrambled.loc[test, t] = np.roll(vals, 1)
    b = run_leaderboard(scrambled, cfg)
    for key, pa in a.test_predictions.items():
        pb = b.test_predictions[key].set_index("product_id")["y_pred"]
        # predictions for products evaluated in both runs (labelled in both) are identical
        common = pa[pa["product_id"].isin(pb.index)]
        assert len(common) > 0
        assert (common["y_pred"].to_numpy() == pb.loc[common["product_id"]].to_numpy()).all()
    fz = a.serving[("category", "full")].featurizer
    assert fz.n_fit_rows_ == int((frame["split"] == "train").sum())


def test_a_retrain_trains_only_the_chosen_model_and_the_baseline_and_serves_the_chosen(frame, result):
    """(category, full) retrains complement_nb beside the linear_svc baseline, even if another model
    validated better; every other task and regime is selected among all models as before."""
    cfg = _cfg(chosen={("category", "full"): "complement_nb", ("gender", "full"): "clip_fusion"})
    res = run_leaderboard(frame, cfg)
    lb = res.leaderboard[res.leaderboard["source"] == "all"]
    trained = {k: set(g["model"]) for k, g in lb.groupby(["task", "regime"])}
    assert trained[("category", "full")] == {"complement_nb", "linear_svc"}
    assert trained[("gender", "full")] == {"clip_fusion", "linear_svc"}
    assert trained[("usage", "full")] == {"linear_svc", "complement_nb", "lightgbm", "clip_fusion"}
    assert trained[("category", "image")] == {"linear_svc", "complement_nb", "lightgbm", "image_cnn"}
    assert res.serving[("category", "full")].model_name == "complement_nb"
    assert res.serving[("gender", "full")].model_name == "clip_fusion"
    served = lb[lb["serving"]].set_index(["task", "regime"])["model"]
    assert served[("category", "full")] == "complement_nb" and served[("gender", "full")] == "clip_fusion"
    # Unchosen pairs serve their validation winner, as in the selection run (same seeds, same models).
    for key in [("usage", "image"), ("category", "image"), ("gender", "image")]:
        assert res.serving[key].model_name == result.serving[key].model_name


def test_a_retrained_linear_choice_is_its_own_baseline_and_the_gate_compares_it_with_the_published_model(frame):
    """logreg and linear_svc are the gate's linear references: retraining either fits nothing beside it
    (a non-linear choice gets the linear_svc baseline), and the gate's only reference for the logreg
    candidate is the published model."""
    from fashion_pipeline.core.models.publishing import baseline_row, gate_each

    cfg = _cfg(regimes=("full",), classical=("linear_svc", "logreg", "complement_nb"), neural=(),
               chosen={("category", "full"): "linear_svc", ("gender", "full"): "logreg",
                       ("usage", "full"): "complement_nb"})
    res = run_leaderboard(frame, cfg)
    lb = res.leaderboard[res.leaderboard["source"] == "all"]
    trained = {k: set(g["model"]) for k, g in lb.groupby(["task", "regime"])}
    assert trained == {("category", "full"): {"linear_svc"}, ("gender", "full"): {"logreg"},
                       ("usage", "full"): {"complement_nb", "linear_svc"}}
    name, f1 = baseline_row(res.leaderboard, "gender", "full")
    assert name == "logreg"
    row = {"name": "gender_classifier", "model": "logreg", "test_macro_f1": f1, "baseline_model": name,
           "baseline_test_macro_f1": f1, "published_version_before": "v1", "published_test_macro_f1": f1 + 0.1}
    decision = gate_each(pd.DataFrame([row]))["gender_classifier"]
    assert not decision.passed  # 0.1 below the published model: refused by it, not waved through
    assert [c["reference"] for c in decision.comparisons] == ["published gender_classifier v1"]


def test_a_retrain_of_linear_choices_fits_only_the_feature_kinds_they_read(frame, result):
    """Every pair retrains complement_nb (beside the linear_svc baseline): no model reads the 'dense' or
    'wide' kinds, so no TruncatedSVD or text PCA is fitted and no dense block built, while the lightgbm
    and neural models the configuration lists are not trained. The linear models' features are those
    of the selection run: the same test metrics."""
    cfg = _cfg(chosen={(t, r): "complement_nb" for t in TASKS for r in ("full", "image")})
    res = run_leaderboard(frame, cfg)
    for (task, regime), clf in res.serving.items():
        fz = clf.featurizer
        assert clf.model_name == "complement_nb"
        assert fz.kinds_ == ("sparse", "nonneg"), (task, regime)
        assert fz.svd_ is None and getattr(fz, "text_pca_", None) is None, (task, regime)
        with pytest.raises(ValueError, match="'dense' was not fitted"):
            fz.transform(frame.head(3), "dense")
    # The selection run fitted the SVD (lightgbm, clip_fusion read it) on the same rows.
    assert result.serving[("category", "full")].featurizer.svd_ is not None
    cols = ["task", "regime", "model", "source", "accuracy", "macro_f1", "weighted_f1", "n"]
    lb = res.leaderboard[cols].sort_values(cols[:4]).reset_index(drop=True)
    assert set(lb["model"]) == {"complement_nb", "linear_svc"}
    same = result.leaderboard[result.leaderboard["model"].isin(["complement_nb", "linear_svc"])]
    pd.testing.assert_frame_equal(lb, same[cols].sort_values(cols[:4]).reset_index(drop=True))


def test_serving_classifier_predicts_labels_and_probabilities(frame, result):
    rows = frame[frame["split"] == "test"].head(10)
    for (task, regime), clf in result.serving.items():
        out = clf.predict(rows)
        assert out["product_id"].tolist() == rows["product_id"].tolist()
        assert set(out["label"]) <= set(clf.classes)
        proba = clf.predict_proba(rows)
        assert list(proba.columns) == clf.classes
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
        assert (proba.idxmax(axis=1).to_numpy() == out["label"].to_numpy()).all()
        again = pickle.loads(pickle.dumps(clf))
        pd.testing.assert_frame_equal(again.predict(rows), out)
        assert clf.features_spec()["regime"] in ("full", "image")


def test_training_rows_hide_the_brand_on_about_the_rate_and_nothing_else():
    from fashion_pipeline.core.models.leaderboard import hide_brand

    train = pd.DataFrame({"brand": [f"b{i}" for i in range(2000)], "title": [f"t{i}" for i in range(2000)]})
    out = hide_brand(train, 0.5, seed=0)
    hidden = out["brand"].isna()
    assert 0.45 < hidden.mean() < 0.55
    assert (out["title"] == train["title"]).all() and (out.loc[~hidden, "brand"] == train.loc[~hidden, "brand"]).all()
    assert train["brand"].notna().all()  # the caller's frame is untouched
    assert hidden.equals(hide_brand(train, 0.5, seed=0)["brand"].isna())  # seeded
    assert hide_brand(train, 0.0) is train


def _image_task_data(frame):
    """Image embeddings and category codes (train / validation), as the image regime's network sees them."""
    rows = frame[frame["image_embedding"].notna() & frame["category"].notna()]
    classes = sorted(rows.loc[rows.split == "train", "category"].unique())
    out = {}
    for s in ("train", "validation"):
        part = rows[rows.split == s]
        x = np.stack(part["image_embedding"].to_numpy()).astype(np.float32)
        y = part["category"].map({c: i for i, c in enumerate(classes)}).fillna(-1).astype(int).to_numpy()
        out[s] = (x, y)
    return out, len(classes)


def test_neural_training_standardises_its_inputs_and_keeps_the_epoch_with_the_best_validation_f1(frame):
    from sklearn.metrics import f1_score

    from fashion_pipeline.core.models.fusion import predict_multitask, train_multitask

    data, k = _image_task_data(frame)
    (xt, yt), (xv, yv) = data["train"], data["validation"]
    yt = yt.copy()
    yt[:5] = -1  # rows without a label do not train, so they do not enter the standardisation
    net, info = train_multitask(xt, {"category": yt}, xv, {"category": yv}, {"category": k},
                                NeuralConfig(epochs=40, patience=2, hidden=64))
    used = xt[yt >= 0].astype(np.float64)
    np.testing.assert_allclose(net.x_mean.numpy(), used.mean(axis=0), rtol=1e-4, atol=1e-6)
    std = used.std(axis=0)
    np.testing.assert_allclose(net.x_scale.numpy(), np.where(std > 1e-6, std, 1.0), rtol=1e-4, atol=1e-6)
    # Training stopped two epochs after its best validation macro-F1 (recounted here), and the weights
    # returned are that epoch's, not the last one's.
    f1s = [h["val_macro_f1"] for h in info["history"]]
    assert len(f1s) < 40 and info["best_epoch"] == len(f1s) - 3
    assert info["best_val_macro_f1"] == max(f1s) == f1s[info["best_epoch"]] > f1s[-1]
    pred = predict_multitask(net, xv)["category"].argmax(axis=1)
    m = yv >= 0
    assert f1_score(yv[m], pred[m], average="macro", zero_division=0) == pytest.approx(max(f1s))
    # A network pickled before inputs were standardised (no buffers) still predicts, on raw inputs.
    del net._buffers["x_mean"], net._buffers["x_scale"]
    raw = predict_multitask(net, (xv - used.mean(axis=0)) / np.where(std > 1e-6, std, 1.0))["category"]
    assert raw.argmax(axis=1).tolist() == pred.tolist()


def test_a_warm_started_network_fine_tunes_a_copy_and_never_ends_worse_on_validation(frame):
    from fashion_pipeline.core.models.fusion import train_multitask

    data, k = _image_task_data(frame)
    (xt, yt), (xv, yv) = data["train"], data["validation"]
    old, _ = train_multitask(xt, {"category": yt}, xv, {"category": yv}, {"category": k},
                             NeuralConfig(epochs=3, patience=5, hidden=64))
    before = {n: t.clone() for n, t in old.state_dict().items()}
    net, info = train_multitask(xt[::2], {"category": yt[::2]}, xv, {"category": yv}, {"category": k},
                                NeuralConfig(epochs=40, patience=5, hidden=64, warm_epochs=2, warm_patience=2),
                                init=old)
    assert info["warm_start"] == "warm"
    # Epoch -1 is the given network on these validation rows; then warm_epochs epochs, not `epochs` (a
    # warm_patience of 2 lets both run whatever they score).
    assert [h["epoch"] for h in info["history"]] == [-1, 0, 1] and info["epochs_run"] == 2
    f1s = [h["val_macro_f1"] for h in info["history"]]
    assert info["best_val_macro_f1"] == max(f1s) >= f1s[0]
    # Its input standardisation is the given network's (not refitted on the half it trained on), and
    # the given network is unchanged.
    assert torch_equal(net.x_mean, old.x_mean) and net is not old
    assert all(torch_equal(t, before[n]) for n, t in old.state_dict().items())
    # Another shape starts cold, and says why.
    _, cold = train_multitask(xt, {"category": yt}, xv, {"category": yv}, {"category": k},
                              NeuralConfig(epochs=1, hidden=32), init=old)
    assert cold["warm_start"].startswith("cold: its width 64") and [h["epoch"] for h in cold["history"]] == [0]


@pytest.mark.parametrize("warm_patience", [1, 2])
def test_a_network_fine_tune_ends_after_warm_patience_epochs_without_a_better_validation_score(frame, warm_patience):
    from fashion_pipeline.core.models.fusion import predict_multitask, train_multitask

    data, k = _image_task_data(frame)
    (xt, yt), (xv, yv) = data["train"], data["validation"]
    old, _ = train_multitask(xt, {"category": yt}, xv, {"category": yv}, {"category": k},
                             NeuralConfig(epochs=20, patience=5, hidden=64))
    # A learning rate 500 times the cold one: no fine-tuning epoch beats the starting weights.
    cfg = NeuralConfig(epochs=40, patience=5, hidden=64, warm_epochs=6, warm_lr_scale=500.0,
                       warm_patience=warm_patience)
    net, info = train_multitask(xt, {"category": yt}, xv, {"category": yv}, {"category": k}, cfg, init=old)
    assert [h["epoch"] for h in info["history"]] == list(range(-1, warm_patience))
    assert info["epochs_run"] == warm_patience and info["best_epoch"] == -1
    f1s = [h["val_macro_f1"] for h in info["history"]]
    assert all(f < f1s[0] for f in f1s[1:])
    # What it serves is the starting weights.
    np.testing.assert_allclose(predict_multitask(net, xv)["category"], predict_multitask(old, xv)["category"],
                               rtol=1e-5, atol=1e-7)


def test_an_ensemble_serves_the_mean_probability_of_networks_trained_from_consecutive_seeds(frame):
    from sklearn.metrics import f1_score

    from fashion_pipeline.core.models.fusion import MultiTaskEnsemble, predict_multitask, train_multitask

    data, k = _image_task_data(frame)
    (xt, yt), (xv, yv) = data["train"], data["validation"]

    def fit(**cfg):
        return train_multitask(xt, {"category": yt}, xv, {"category": yv}, {"category": k},
                               NeuralConfig(epochs=4, patience=5, hidden=32, **cfg))

    ens, info = fit(seed=7, ensemble=3)
    assert isinstance(ens, MultiTaskEnsemble) and len(ens.members) == 3
    # Member i is the network a single fit from seed 7 + i gives.
    for i, member in enumerate(ens.members):
        alone, _ = fit(seed=7 + i)
        assert all(torch_equal(t, alone.state_dict()[n]) for n, t in member.state_dict().items())
    p = predict_multitask(ens, xv)["category"]
    mean = np.mean([predict_multitask(m, xv)["category"] for m in ens.members], axis=0)
    np.testing.assert_allclose(p, mean, rtol=1e-5, atol=1e-6)
    m = yv >= 0
    assert info["best_val_macro_f1"] == pytest.approx(
        f1_score(yv[m], mean[m].argmax(axis=1), average="macro", zero_division=0))
    assert info["best_epoch"] == [i["best_epoch"] for i in info["members"]] and len(info["members"]) == 3
    assert info["epochs_run"] == sum(i["epochs_run"] for i in info["members"])
    # A retrain fine-tunes member i from stored member i; an ensemble of another size starts cold.
    warm, winfo = train_multitask(xt[::2], {"category": yt[::2]}, xv, {"category": yv}, {"category": k},
                                  NeuralConfig(epochs=4, hidden=32, ensemble=3, warm_epochs=1), init=ens)
    assert winfo["warm_start"] == "warm" and [h["epoch"] for h in winfo["members"][2]["history"]] == [-1, 0]
    assert all(torch_equal(w.x_mean, e.x_mean) for w, e in zip(warm.members, ens.members))
    kept, _ = train_multitask(xt[::2], {"category": yt[::2]}, xv, {"category": yv}, {"category": k},
                              NeuralConfig(hidden=32, ensemble=3, warm_epochs=0), init=ens)
    assert all(torch_equal(t, e.state_dict()[n]) for w, e in zip(kept.members, ens.members)
               for n, t in w.state_dict().items())  # no epoch: each member keeps its own starting weights
    _, cold = train_multitask(xt, {"category": yt}, xv, {"category": yv}, {"category": k},
                              NeuralConfig(epochs=1, hidden=32, ensemble=2), init=ens)
    assert cold["warm_start"] == "cold: it averages 3 network(s), the configured ensemble 2"
    with pytest.raises(ValueError, match="ensemble must be 1 or more"):
        fit(ensemble=0)


def test_a_cuda_device_on_a_machine_without_cuda_is_a_clear_error():
    import torch

    from fashion_pipeline.core.models.fusion import train_multitask

    if torch.cuda.is_available():
        pytest.skip("checks the error on machines without CUDA")
    x, y = np.zeros((8, 4), np.float32), {"category": np.array([0, 1] * 4)}
    with pytest.raises(ValueError, match="'cuda' asked for, but CUDA is not available"):
        train_multitask(x, y, x, y, {"category": 2}, NeuralConfig(epochs=1, device="cuda"))


# GPU code path (profile gpu: classifier_leaderboard's neural_device 'cuda'): runs only on a CUDA machine.
# Image embeddings only (no text encoder needed), from the real EfficientNet-Lite0.
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_networks_train_on_cuda_and_come_back_on_the_cpu():
    from sklearn.metrics import f1_score

    from fashion_pipeline.core.models.fusion import predict_multitask, train_multitask

    df, image = real_products_with_image_embeddings()
    frame = with_embeddings(df, df["product_id"].tolist(), image, np.zeros((len(df), 384), np.float32))
    data, k = _image_task_data(frame)
    (xt, yt), (xv, yv) = data["train"], data["validation"]

    def fit(init=None, **cfg):
        return train_multitask(xt, {"category": yt}, xv, {"category": yv}, {"category": k},
                               NeuralConfig(epochs=15, patience=3, hidden=64, **cfg), init=init)

    cpu, cpu_info = fit()
    gpu, gpu_info = fit(device="cuda")
    assert {t.device.type for t in [*gpu.parameters(), *gpu.buffers()]} == {"cpu"}  # a stored model loads anywhere
    m = yv >= 0
    f1 = f1_score(yv[m], predict_multitask(gpu, xv)["category"].argmax(axis=1)[m], average="macro", zero_division=0)
    assert f1 == pytest.approx(gpu_info["best_val_macro_f1"], abs=0.02)  # what it chose on is what it serves
    # It learns: well above always answering the commonest training class. (Not compared with the CPU
    # fit: dropout draws other masks on the GPU, and on these ~60 validation rows seeds alone moved the
    # best macro-F1 between 0.67 and 0.90 on an H200 and between 0.74 and 0.90 on the CPU.)
    majority = np.full(m.sum(), np.bincount(yt[yt >= 0]).argmax())
    assert gpu_info["best_val_macro_f1"] > f1_score(yv[m], majority, average="macro", zero_division=0) + 0.3
    # The same network scores the same on either device: the CPU-trained one, warm-started on the GPU,
    # starts (epoch -1, evaluated there) at its CPU validation score.
    warm, warm_info = fit(init=cpu, device="cuda", warm_epochs=2, warm_patience=2)
    assert warm_info["warm_start"] == "warm" and [h["epoch"] for h in warm_info["history"]] == [-1, 0, 1]
    assert warm_info["history"][0]["val_macro_f1"] == pytest.approx(cpu_info["best_val_macro_f1"], abs=0.02)
    # the text-CNN branch (multimodal_cnn) moves its token ids to the device too
    rng = np.random.default_rng(0)
    tok_t, tok_v = rng.integers(1, 50, (len(xt), 12)), rng.integers(1, 50, (len(xv), 12))
    text_net, _ = train_multitask(xt, {"category": yt}, xv, {"category": yv}, {"category": k},
                                  NeuralConfig(epochs=2, hidden=64, device="cuda"), tok_train=tok_t, tok_val=tok_v,
                                  vocab_size=50)
    assert text_net.text is not None and next(text_net.parameters()).device.type == "cpu"
    assert np.isfinite(predict_multitask(text_net, xv, tok_v)["category"]).all()


def test_a_leaderboard_retrain_warm_starts_only_a_retrained_image_cnn_with_the_same_classes(frame):
    image_tasks = {("category", "image"): "image_cnn", ("gender", "image"): "image_cnn", ("usage", "image"): "image_cnn"}
    first = run_leaderboard(frame, _cfg(regimes=("image",), chosen=image_tasks))  # no warm start handed over
    assert first.warm_starts == {}
    net = first.serving[("category", "image")].net
    classes = {t: first.serving[(t, "image")].classes for t in TASKS}
    warm = {("image_cnn", "image"): (net, classes), ("clip_fusion", "full"): (net, classes)}
    res = run_leaderboard(frame, _cfg(regimes=("image",), chosen=image_tasks, warm=warm))
    assert res.serving[("category", "image")].net is not net
    assert res.warm_starts == {"image_cnn/image": "warm (kept epoch "
                               + res.warm_starts["image_cnn/image"].split("kept epoch ")[1]}
    # clip_fusion is not retrained in the image regime; retrained in 'full' its inputs are refitted: cold.
    res = run_leaderboard(frame, _cfg(regimes=("full",), chosen={("gender", "full"): "clip_fusion"}, warm=warm))
    assert res.warm_starts["clip_fusion/full"].startswith("cold: clip_fusion's inputs are refitted")
    # Classes that changed since the network was trained: cold.
    changed = {**classes, "usage": classes["usage"][:-1]}
    res = run_leaderboard(frame, _cfg(regimes=("image",), chosen=image_tasks,
                                      warm={("image_cnn", "image"): (net, changed)}))
    assert res.warm_starts["image_cnn/image"] == "cold: the classes of ['usage'] are not those the network was trained on"
    # A pair that selects (nothing chosen for it) does not warm-start the network it shares.
    res = run_leaderboard(frame, _cfg(regimes=("image",), chosen={("category", "image"): "image_cnn"}, warm=warm))
    assert res.warm_starts["image_cnn/image"].startswith("cold: ['gender', 'usage'] select")


def test_the_asset_warm_starts_from_the_stored_image_cnn_it_retrains(frame, tmp_path):
    from fashion_pipeline.assets.classifiers import ClassifierConfig, warm_networks
    from fashion_pipeline.core.model_store import ModelStore
    from fashion_pipeline.core.models.publishing import classifier_name

    image_tasks = {(t, "image"): "image_cnn" for t in TASKS}
    first = run_leaderboard(frame, _cfg(regimes=("image",), classical=(), neural=("image_cnn",), chosen=image_tasks))
    store = ModelStore(tmp_path)
    versions = {}
    for t in TASKS:
        clf = first.serving[(t, "image")]
        versions[t] = store.save(classifier_name(t, "image"), clf, {}, clf.features_spec())
    store.publish(classifier_name("gender", "image"), versions["gender"])  # the others: latest candidates
    warm, notes = warm_networks(store, {**image_tasks, ("category", "full"): "linear_svc"}, ClassifierConfig())
    assert set(warm) == {("image_cnn", "image")}
    net, classes = warm[("image_cnn", "image")]
    assert classes == {t: first.serving[(t, "image")].classes for t in TASKS}
    assert torch_equal(net.heads["usage"].weight, first.serving[("usage", "image")].net.heads["usage"].weight)
    assert all(versions[t] in notes["image_cnn/image"] for t in TASKS)
    assert warm_networks(store, image_tasks, ClassifierConfig(neural_warm_epochs=0)) == ({}, {})


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_neural_class_weights_are_the_balanced_weights_to_the_configured_power():
    from fashion_pipeline.core.models.fusion import balanced_weights

    codes = np.array([0] * 97 + [1] + [2] * 2)  # n = 100, k = 3: n / (k * count) = 0.3436, 33.3, 16.7
    want = [100 / 291, 10.0, 10.0]  # clipped to at most 10
    np.testing.assert_allclose(balanced_weights(codes, 3), want, rtol=1e-6)
    np.testing.assert_allclose(balanced_weights(codes, 3, 0.5), np.sqrt(want), rtol=1e-6)
    assert NeuralConfig().class_weight_power == 0.5


def test_a_retrain_re_scores_a_stored_baseline_only_while_it_is_fresh(tmp_path):
    """stored_baselines: a non-linear choice's stored baseline is handed back while the train split is
    within baseline_max_growth of the one it was fitted on and the encoder is the same; each other case
    is fitted again, and says why. Linear choices need none."""
    from fashion_pipeline.assets.classifiers import ClassifierConfig, stored_baselines
    from fashion_pipeline.core.model_store import ModelStore

    store = ModelStore(tmp_path / "models")
    enc = {"backend": "offline", "image_dim": 1280}
    v = store.save("gender_classifier_image_baseline", {"a": "baseline"}, {}, {"encoder": enc, "train_split_rows": 1000})
    store.save("usage_classifier_image_baseline", {"b": "baseline"}, {}, {"encoder": {"backend": "open_clip"},
                                                                          "train_split_rows": 1000})
    chosen = {("gender", "image"): "image_cnn", ("usage", "image"): "image_cnn", ("category", "image"): "lightgbm",
              ("category", "full"): "linear_svc", ("gender", "full"): "logreg"}
    cfg = ClassifierConfig()
    for rows in (1000, 1100, 900):
        out, notes = stored_baselines(store, chosen, cfg, enc, rows)
        assert list(out) == [("gender", "image")] and out[("gender", "image")][0] == {"a": "baseline"}
        assert out[("gender", "image")][1]["version"] == v
        assert notes == {"category/image": "fitted (none stored)",
                         "usage/image": notes["usage/image"]} and "another encoder" in notes["usage/image"]
    out, notes = stored_baselines(store, chosen, cfg, enc, 1101)
    assert out == {} and "fitted on 1000 train-split rows, this run has 1101" in notes["gender/image"]
    out, notes = stored_baselines(store, chosen, ClassifierConfig(baseline_max_growth=0), enc, 1000)
    assert out == {} and notes["gender/image"] == "fitted (baseline_max_growth 0)"


def test_a_retrain_with_a_kept_featurizer_transforms_with_it_and_starts_logreg_from_the_stored_coefficients(frame):
    """LeaderboardConfig.featurizers / warm_linear: the regime's rows go through the featurizer handed over
    (no new fit: the serving classifiers hold that very object), the retrained logreg starts lbfgs from the
    stored coefficients and ends where the cold fit did (same data here, so within a few iterations); a
    featurizer without a kind the models read is not used, and the logreg then starts cold."""
    first = run_leaderboard(frame, _cfg(regimes=("full",), classical=("logreg",), neural=()))
    fz = first.serving[("category", "full")].featurizer
    chosen = {(t, "full"): "logreg" for t in TASKS}
    warm = {(t, "full"): (first.serving[(t, "full")].estimator, first.serving[(t, "full")].classes) for t in TASKS}
    again = run_leaderboard(frame, _cfg(regimes=("full",), classical=("logreg",), neural=(), chosen=chosen,
                                        featurizers={"full": fz}, warm_linear=warm))
    assert again.featurizer_starts == {"full": f"kept (fitted on {fz.n_fit_rows_} train rows)"}
    cols = ["task", "source", "accuracy", "macro_f1"]
    for t in TASKS:
        clf = again.serving[(t, "full")]
        assert clf.featurizer is fz
        cold_iters = int(first.serving[(t, "full")].estimator.estimator.n_iter_.max())
        warm_iters = int(clf.estimator.estimator.n_iter_.max())
        assert again.linear_starts[f"{t}/full"] == f"warm: {warm_iters} lbfgs iterations"
        assert warm_iters < cold_iters, t
        assert clf.estimator.estimator.warm_start is False  # a later refit of the stored model starts cold
    lb0 = first.leaderboard.sort_values(cols[:2]).reset_index(drop=True)[cols]
    lb1 = again.leaderboard.sort_values(cols[:2]).reset_index(drop=True)[cols]
    pd.testing.assert_frame_equal(lb0, lb1, atol=0.02, check_exact=False)

    narrow = run_leaderboard(frame, _cfg(regimes=("full",), classical=("linear_svc",), neural=())).serving[
        ("category", "full")].featurizer  # fitted for the 'sparse' kind alone
    mixed = {**chosen, ("usage", "full"): "complement_nb"}
    res = run_leaderboard(frame, _cfg(regimes=("full",), classical=("logreg", "complement_nb"), neural=(),
                                      chosen=mixed, featurizers={"full": narrow}, warm_linear=warm))
    assert res.featurizer_starts == {"full": "fitted: the one handed over has no ['nonneg']"}
    assert res.serving[("category", "full")].featurizer is not narrow
    assert res.linear_starts["gender/full"] == "cold: fitted: the one handed over has no ['nonneg'] (other columns)"


def test_fit_classical_refuses_a_warm_start_for_a_solver_that_cannot_take_one():
    from fashion_pipeline.core.models.classifiers import fit_classical

    x, y = np.eye(4), np.array([0, 1, 0, 1])
    svc, _ = fit_classical("linear_svc", x, y)
    with pytest.raises(ValueError, match=r"linear_svc cannot start from a fitted model \(warm-startable: \['logreg'\]\)"):
        fit_classical("linear_svc", x, y, warm_from=svc)


def test_a_retrain_keeps_a_regimes_featurizer_only_while_every_task_retrains_with_the_same_fresh_one(tmp_path):
    """kept_featurizers: a regime's featurizer is handed over when all three tasks retrain stored classifiers
    that share it (one fit digest) built with this config's settings, read this encoder, and were fitted
    within warm_max_growth of this run's train rows; the logreg choices there hand over their estimator. Every other case says why."""
    from types import SimpleNamespace

    from fashion_pipeline.assets.classifiers import ClassifierConfig, kept_featurizers
    from fashion_pipeline.core.model_store import ModelStore

    store = ModelStore(tmp_path / "models")
    enc = {"backend": "offline", "image_dim": 1280}

    def save(name, digest, rows=1000, encoder=enc, model="linear_svc"):
        fz = SimpleNamespace(fit_digest_=digest, n_fit_rows_=rows, svd_components=64, image_components=64, seed=0)
        clf = SimpleNamespace(featurizer=fz, estimator=f"{name} estimator", classes=["a", "b"], model_name=model)
        return store.save(name, clf, {}, {"encoder": encoder, "model": model})

    full = {"category": "linear_svc", "gender": "logreg", "usage": "linear_svc"}
    for task, model in full.items():
        save(f"{task}_classifier", "d-full", model=model)
    for task in TASKS:
        save(f"{task}_classifier_sparse", "d-sparse" if task != "usage" else "d-other")
        save(f"{task}_classifier_image", "d-image", encoder={"backend": "open_clip"})
    chosen = {**{(t, "full"): m for t, m in full.items()}, **{(t, r): "linear_svc" for t in TASKS for r in ("sparse", "image")}}
    cfg = ClassifierConfig()
    for rows in (1000, 1250, 750):
        fzs, linear, notes = kept_featurizers(store, chosen, cfg, enc, rows)
        assert list(fzs) == ["full"] and fzs["full"].fit_digest_ == "d-full"
        assert linear == {("gender", "full"): ("gender_classifier estimator", ["a", "b"])}
        assert notes["full"].startswith("kept from category_classifier ") and notes["full"].endswith("(fitted on 1000 train rows)")
        assert notes["sparse"] == "fitted (its classifiers were trained with different featurizers)"
        assert notes["image"].startswith("fitted (category_classifier_image ") and notes["image"].endswith("read another encoder)")
    fzs, _, notes = kept_featurizers(store, chosen, cfg, enc, 1251)
    assert "full" not in fzs and notes["full"] == ("fitted (its featurizer was fitted on 1000 train rows, this run has "
                                                   "1251 (warm_max_growth 25%))")
    fzs, _, notes = kept_featurizers(store, chosen, ClassifierConfig(image_components=32), enc, 1000)
    assert "full" not in fzs and notes["full"] == (
        "fitted (its featurizer was built with {'image_components': 64}, this run's config says "
        "{'svd_components': 64, 'image_components': 32, 'seed': 0})")
    del chosen[("usage", "full")]
    fzs, linear, notes = kept_featurizers(store, chosen, cfg, enc, 1000)
    assert fzs == {} and linear == {} and notes["full"] == "fitted (a task selects here)"
    fzs, _, notes = kept_featurizers(store, chosen, ClassifierConfig(warm_max_growth=0), enc, 1000)
    assert fzs == {} and set(notes.values()) == {"fitted (warm_max_growth 0)"}


def test_fit_on_lanes_keeps_liblinear_fits_on_one_thread_and_returns_results_in_job_order():
    import threading

    from fashion_pipeline.core.models.classifiers import fit_on_lanes

    jobs = [("category", "linear_svc"), ("category", "logreg"), ("category", "lightgbm"), ("gender", "linear_svc"),
            ("gender", "complement_nb"), ("usage", "ridge"), ("usage", "linear_svc")]
    ran = []  # (job, thread), appended as each fit runs

    def fit(task, name):
        ran.append(((task, name), threading.current_thread().name))
        return f"{task}/{name}"

    out, how = fit_on_lanes(fit, jobs, n_threads=2)
    assert out == [f"{t}/{n}" for t, n in jobs]
    thread = dict(ran)
    svc_threads = {thread[j] for j in jobs if j[1] == "linear_svc"}
    other_threads = {thread[j] for j in jobs if j[1] in ("logreg", "complement_nb", "ridge")}
    assert len(svc_threads) == 1 and len(other_threads) == 1 and svc_threads != other_threads
    assert thread[("category", "lightgbm")] == threading.main_thread().name  # its own threads: alone, afterwards
    assert ran[-1][0] == ("category", "lightgbm")
    assert how == "two lanes: 3 liblinear fits beside 3 other single-threaded ones, then 1 alone"
    # one thread, or nothing to overlap: every fit in order, in the caller's thread
    for n_threads, js in ((1, jobs), (2, [j for j in jobs if j[1] == "linear_svc"])):
        ran.clear()
        out, how = fit_on_lanes(fit, js, n_threads=n_threads)
        assert [j for j, _ in ran] == js and {t for _, t in ran} == {threading.main_thread().name}
        assert how == "one after another"


def test_linear_fits_on_two_lanes_are_the_fits_one_after_another(frame):
    """Two threads run liblinear beside lbfgs / Complement NB: every model, prediction and choice is what
    one thread gives (a liblinear fit overlapping another would draw from its generator and differ)."""
    kw = dict(regimes=("full",), classical=("linear_svc", "logreg", "complement_nb"), neural=())
    one = run_leaderboard(frame, _cfg(n_threads=1, **kw))
    two = run_leaderboard(frame, _cfg(n_threads=2, **kw))
    assert one.timings["classical_fit_lanes"] == {"full": "one after another"}
    assert two.timings["classical_fit_lanes"] == {
        "full": "two lanes: 3 liblinear fits beside 6 other single-threaded ones"}
    assert set(one.test_predictions) == set(two.test_predictions) and len(one.test_predictions) == 9
    for key, pred in one.test_predictions.items():
        assert pred["y_pred"].tolist() == two.test_predictions[key]["y_pred"].tolist(), key
    cols = ["task", "model", "regime", "source", "accuracy", "macro_f1", "serving"]
    pd.testing.assert_frame_equal(one.leaderboard[cols], two.leaderboard[cols])
    for key, clf in one.serving.items():
        a, b = clf.estimator, two.serving[key].estimator
        a, b = getattr(a, "estimator", a), getattr(b, "estimator", b)
        coef = "coef_" if hasattr(a, "coef_") else "feature_log_prob_"
        np.testing.assert_array_equal(getattr(a, coef), getattr(b, coef))
