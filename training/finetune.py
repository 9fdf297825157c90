"""Fine-tuning the encoder: the top K transformer layers of all-MiniLM-L6-v2 + the router head.

The router kind ``finetune`` is a BERT-class classifier: MiniLM's top ``K`` layers are trainable
(``K = 6`` fine-tunes every transformer layer; the token embeddings stay frozen), then mean
pooling and L2 normalisation as the frozen encoder does, then the same multi-head output as the
``mlp`` kind: ``[pooled, task one-hot]`` → a shared hidden layer → one logit per model, with a
loss masked where a dataset never graded a model.

Recipe (linear probe, then fine-tune): the head is first fitted on the frozen embeddings (exactly
the ``mlp`` kind), then the top K layers and the head train together with AdamW (a small learning
rate for the encoder, warm-up then linear decay), validated every fraction of an epoch on a slice
held out by prompt hash; the best validation loss wins (the warm start itself included, so
fine-tuning can only be chosen when it helps on held-out rows).

CPU feasibility: the frozen lower ``6 - K`` layers run once per prompt; their outputs (fp16,
only the real tokens; the lengths are the attention masks) are cached on disk under
``<cache_dir>/hid-<key>-l<layer>/`` keyed like the embedding cache (encoder config + weights),
so each epoch only runs the top K layers. On CPUs with bf16 matrix units (AMX / AVX512-BF16) and
on CUDA the trainable layers run under bf16 autocast (fp32 master weights).

The artefact is an ``mlp``-style head plus ``encoder.safetensors`` holding the fine-tuned layers'
weights under the base model's parameter names; ``load_router`` loads the base encoder and
overlays them (see :class:`services.router.encoder.Encoder`, ``weights_override``).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.contracts import prompt_hash
from services.router.encoder import EMBED_DIM, Encoder, padded_batches, pick_device
from services.router.heads import features, task_features

log = logging.getLogger(__name__)

N_LAYERS = 6


class FinetuneConfig(BaseModel):
    """Hyper-parameters of encoder fine-tuning (logged with the artefact)."""

    model_config = ConfigDict(extra="forbid")

    top_layers: int = Field(default=1, ge=1, le=N_LAYERS, description="K: trainable top layers (6 = all)")
    epochs: int = Field(default=2, ge=1)
    lr_encoder: float = Field(default=5e-5, gt=0)
    lr_head: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: float = Field(default=0.1, ge=0, lt=1, description="fraction of steps")
    batch_size: int | None = Field(default=None, description="default: 32 on CPU, 128 on CUDA")
    val_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    evals_per_epoch: int = Field(default=4, ge=1)
    patience: int = Field(default=4, ge=1, description="validations without improvement before stopping")
    hidden: int = Field(default=128, ge=1)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    head_epochs: int = Field(default=12, ge=1, description="warm start: the mlp head on frozen embeddings")
    head_lr: float = Field(default=3e-3, gt=0)
    amp: bool = Field(default=True, description="bf16 autocast where the hardware has bf16 units")
    threads: int | None = Field(default=None, description="CPU intra-op threads (default: torch's)")
    max_steps: int | None = Field(default=None, ge=1, description="cap on optimiser steps (tests)")
    select_best: bool = Field(default=True, description="keep the best validation state (else the last)")
    seed: int = 0
    device: str | None = None

    @property
    def cached_layer(self) -> int:
        """Index of the hidden state that is cached (0 = the embedding output)."""
        return N_LAYERS - self.top_layers


# --------------------------------------------------------------------------------------------
# the frozen lower layers, cached


def _bf16_cpu() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="ignore")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def lower_states(
    encoder: Encoder, texts: Sequence[str], layer: int, *, batch_size: int = 64
) -> list[np.ndarray]:
    """Hidden states after ``layer`` frozen layers (0 = embeddings), real tokens only, fp16."""
    import torch

    model = encoder.model
    full = model.encoder.layer
    ids = encoder._ids(texts)
    out: list[np.ndarray] = [np.zeros((0, EMBED_DIM), np.float16)] * len(ids)
    model.encoder.layer = torch.nn.ModuleList(list(full)[:layer])
    try:
        with torch.inference_mode():
            for idx, input_ids, mask in padded_batches(ids, batch_size, encoder.tokenizer.pad_token_id):
                hid = model(
                    input_ids=torch.from_numpy(input_ids).to(encoder.device),
                    attention_mask=torch.from_numpy(mask).to(encoder.device),
                )
                h = hid.last_hidden_state.float().cpu().numpy()
                for r, i in enumerate(idx):
                    out[i] = h[r, : len(ids[i])].astype(np.float16)
    finally:
        model.encoder.layer = full
    return out


class HiddenStateCache:
    """Per-prompt hidden states of the frozen lower layers, in ``.npz`` chunks (no pickle).

    ``<cache_dir>/hid-<key>-l<layer>/chunk-NNNN.npz`` holds ``hashes``, ``lengths`` and the
    concatenated ``states`` (fp16, ``(sum(lengths), 384)``); new prompts go to a new chunk.
    """

    def __init__(self, cache_dir: Path, encoder: Encoder, layer: int) -> None:
        self.encoder = encoder
        self.layer = layer
        self.key = encoder.config.key(encoder.weights_sha256())
        self.dir = Path(cache_dir) / f"hid-{self.key}-l{layer}"
        self._rows: dict[str, np.ndarray] = {}
        for path in sorted(self.dir.glob("chunk-*.npz")):
            with np.load(path, allow_pickle=False) as data:
                hashes, lengths, states = data["hashes"].tolist(), data["lengths"], data["states"]
            offs = np.concatenate([[0], np.cumsum(lengths)])
            for i, h in enumerate(hashes):
                self._rows[h] = states[offs[i] : offs[i + 1]]
        if self._rows:
            log.info("hidden-state cache %s: %d prompts", self.dir, len(self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    def states(
        self, prompts: Sequence[str], hashes: Sequence[str] | None = None, *, chunk: int = 2048
    ) -> list[np.ndarray]:
        """The cached states of ``prompts`` (computing and saving the missing ones)."""
        hashes = list(hashes) if hashes is not None else [prompt_hash(p) for p in prompts]
        missing: dict[str, str] = {}
        for p, h in zip(prompts, hashes, strict=True):
            if h not in self._rows and h not in missing:
                missing[h] = p
        if missing:
            todo = list(missing.items())
            log.info("caching layer-%d states of %d prompts", self.layer, len(todo))
            t0 = time.perf_counter()
            self.dir.mkdir(parents=True, exist_ok=True)
            n_chunks = len(list(self.dir.glob("chunk-*.npz")))
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                st = lower_states(self.encoder, [p for _, p in part], self.layer)
                path = self.dir / f"chunk-{n_chunks:04d}.npz"
                tmp = path.with_suffix(".tmp.npz")
                np.savez(
                    tmp,
                    hashes=np.array([h for h, _ in part], dtype=str),
                    lengths=np.array([len(s) for s in st], dtype=np.int32),
                    states=np.concatenate(st) if st else np.zeros((0, EMBED_DIM), np.float16),
                )
                tmp.replace(path)
                n_chunks += 1
                for (h, _), s in zip(part, st, strict=True):
                    self._rows[h] = s
                log.info("  %d/%d cached (%.0fs)", start + len(part), len(todo), time.perf_counter() - t0)
        return [self._rows[h] for h in hashes]


# --------------------------------------------------------------------------------------------
# the model


def _build_net(base_model: Any, top_layers: int, n_in: int, n_models: int, hidden: int, dropout: float):  # noqa: ANN202
    import torch

    class FinetuneNet(torch.nn.Module):
        """Top K BERT layers → masked mean pooling → L2 norm → ``[pooled, task]`` → MLP."""

        def __init__(self) -> None:
            super().__init__()
            self.config = base_model.config
            self.first = N_LAYERS - top_layers
            self.layers = torch.nn.ModuleList(copy.deepcopy(list(base_model.encoder.layer)[self.first :]))
            self.head = torch.nn.Sequential(
                torch.nn.Linear(n_in, hidden),
                torch.nn.ReLU(),
                torch.nn.Dropout(dropout),
                torch.nn.Linear(hidden, n_models),
            )

        def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            from transformers.masking_utils import create_bidirectional_mask

            att = create_bidirectional_mask(config=self.config, inputs_embeds=h, attention_mask=mask)
            for layer in self.layers:
                h = layer(h, att)
                if isinstance(h, tuple):  # older transformers return tuples
                    h = h[0]
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled.float(), p=2, dim=1)

        def forward(self, h: torch.Tensor, mask: torch.Tensor, task_x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.pool(h, mask), task_x], dim=1).float())

    return FinetuneNet()


def _pad(states: Sequence[np.ndarray], rows: Sequence[int], device: str):  # noqa: ANN202
    import torch

    width = max(len(states[i]) for i in rows)
    h = np.zeros((len(rows), width, EMBED_DIM), dtype=np.float32)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for r, i in enumerate(rows):
        n = len(states[i])
        h[r, :n] = states[i]
        mask[r, :n] = 1
    return torch.from_numpy(h).to(device), torch.from_numpy(mask).to(device)


def _batches(lengths: np.ndarray, rows: np.ndarray, bs: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches that pad little: shuffle, sort by length within pools of 50 batches."""
    perm = rows[rng.permutation(len(rows))]
    out = []
    pool = bs * 50
    for s in range(0, len(perm), pool):
        p = perm[s : s + pool]
        p = p[np.argsort(lengths[p], kind="stable")]
        out += [p[i : i + bs] for i in range(0, len(p), bs)]
    return [out[i] for i in rng.permutation(len(out))]


def _masked_bce(logits, y, m):  # noqa: ANN001, ANN202
    import torch

    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=m, reduction="sum")
    return loss / m.sum().clamp(min=1.0)


@dataclass
class FinetuneResult:
    """A fine-tuned network and how it got there."""

    net: Any
    first_layer: int
    device: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    seconds: float = 0.0
    amp: bool = False
    probe: dict[str, np.ndarray] = field(default_factory=dict)

    def head_params(self) -> dict[str, np.ndarray]:
        """The head in :class:`services.router.heads.MLPHead` layout."""
        h = self.net.head
        return {
            "w1": h[0].weight.detach().cpu().numpy().T.copy(),
            "b1": h[0].bias.detach().cpu().numpy().copy(),
            "w2": h[3].weight.detach().cpu().numpy().T.copy(),
            "b2": h[3].bias.detach().cpu().numpy().copy(),
        }

    def encoder_weights(self) -> dict[str, np.ndarray]:
        """The fine-tuned layers under the base model's names (``encoder.layer.N.…``)."""
        out = {}
        for i, layer in enumerate(self.net.layers):
            for name, t in layer.state_dict().items():
                out[f"encoder.layer.{self.first_layer + i}.{name}"] = t.detach().float().cpu().numpy().copy()
        return out


def _run(net, states, rows, task_x, device, bs, amp):  # noqa: ANN001, ANN202
    """Forward pass in eval mode: (logits, pooled) for ``rows``."""
    import torch

    lengths = np.array([len(states[i]) for i in rows])
    order = np.argsort(lengths, kind="stable")
    logits = np.zeros((len(rows), net.head[3].out_features), dtype=np.float64)
    pooled = np.zeros((len(rows), EMBED_DIM), dtype=np.float32)
    net.eval()
    with torch.inference_mode(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
        for s in range(0, len(rows), bs):
            sel = order[s : s + bs]
            r = [rows[i] for i in sel]
            h, m = _pad(states, r, device)
            p = net.pool(h, m)
            tx = torch.from_numpy(task_x[r]).to(device)
            logits[sel] = net.head(torch.cat([p, tx], dim=1).float()).float().cpu().numpy()
            pooled[sel] = p.float().cpu().numpy()
    return logits, pooled


def finetune(
    states: Sequence[np.ndarray],
    frozen: np.ndarray,
    tasks: Sequence[str],
    vocab: Sequence[str],
    labels: np.ndarray,
    hashes: Sequence[str],
    base_model: Any,
    cfg: FinetuneConfig,
    *,
    progress: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune on all given rows (a validation slice, by prompt hash, is held out inside)."""
    import torch

    from .train import TrainConfig, _torch_fit

    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    threads = torch.get_num_threads()
    if device == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    amp = cfg.amp and (device == "cuda" or _bf16_cpu())
    bs = cfg.batch_size or (128 if device == "cuda" else 32)
    try:
        torch.manual_seed(cfg.seed)
        n, m = labels.shape
        task_x = task_features(list(tasks), vocab)
        bucket = np.array(
            [
                int.from_bytes(hashlib.sha256(f"val{cfg.seed}:{h}".encode()).digest()[:8], "big")
                for h in hashes
            ]
        )
        val = (bucket % 1000) < int(round(cfg.val_fraction * 1000))
        tr_rows, va_rows = np.flatnonzero(~val), np.flatnonzero(val)
        # 1. linear probe: the mlp head on frozen embeddings of the training part
        head_cfg = TrainConfig(
            kind="mlp",
            hidden=cfg.hidden,
            dropout=cfg.dropout,
            epochs=cfg.head_epochs,
            lr=cfg.head_lr,
            seed=cfg.seed,
            device=device,
        )
        x = features(frozen, list(tasks), vocab)
        hp = _torch_fit("mlp", x[tr_rows], labels[tr_rows], head_cfg)
        net = _build_net(base_model, cfg.top_layers, x.shape[1], m, cfg.hidden, cfg.dropout).to(device)
        with torch.no_grad():
            net.head[0].weight.copy_(torch.tensor(hp["w1"].T))
            net.head[0].bias.copy_(torch.tensor(hp["b1"]))
            net.head[3].weight.copy_(torch.tensor(hp["w2"].T))
            net.head[3].bias.copy_(torch.tensor(hp["b2"]))
        for p in net.parameters():
            p.requires_grad_(True)
        # 2. fine-tune the top K layers and the head together
        yt = np.nan_to_num(labels).astype(np.float32)
        mt = (~np.isnan(labels)).astype(np.float32)
        lengths = np.array([len(s) for s in states])
        rng = np.random.default_rng(cfg.seed)
        steps_per_epoch = max(1, (len(tr_rows) + bs - 1) // bs)
        total = cfg.epochs * steps_per_epoch
        if cfg.max_steps:
            total = min(total, cfg.max_steps)
        every = max(1, steps_per_epoch // cfg.evals_per_epoch)
        opt = torch.optim.AdamW(
            [
                {"params": net.layers.parameters(), "lr": cfg.lr_encoder},
                {"params": net.head.parameters(), "lr": cfg.lr_head},
            ],
            weight_decay=cfg.weight_decay,
        )
        warm = max(1, int(cfg.warmup * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
        )

        def val_loss() -> float:
            if not len(va_rows):
                return float("nan")
            lg, _ = _run(net, states, va_rows, task_x, device, bs * 2, amp)
            y, mk = torch.tensor(yt[va_rows]), torch.tensor(mt[va_rows])
            return float(_masked_bce(torch.tensor(lg, dtype=torch.float32), y, mk))

        best = val_loss()
        best_state = copy.deepcopy(net.state_dict())
        res = FinetuneResult(net, net.first, device, amp=amp, probe=hp)
        res.history.append({"step": 0, "val_loss": best, "train_loss": float("nan")})
        step, bad, run_loss, run_n = 0, 0, 0.0, 0
        stop = False
        for _epoch in range(cfg.epochs):
            for b in _batches(lengths, tr_rows, bs, rng):
                net.train()
                h, mask = _pad(states, b, device)
                tx = torch.from_numpy(task_x[b]).to(device)
                with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=amp):
                    logits = net(h, mask, tx)
                loss = _masked_bce(
                    logits.float(), torch.from_numpy(yt[b]).to(device), torch.from_numpy(mt[b]).to(device)
                )
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                sched.step()
                step += 1
                run_loss += float(loss.detach())
                run_n += 1
                if step % every == 0 or step == total:
                    vl = val_loss()
                    res.history.append({"step": step, "val_loss": vl, "train_loss": run_loss / run_n})
                    run_loss, run_n = 0.0, 0
                    took = time.perf_counter() - t0
                    msg = f"step {step}/{total}: val loss {vl:.4f} (best {best:.4f}) {took:.0f}s"
                    if progress:
                        progress(msg)
                    log.info(msg)
                    if vl < best - 1e-5:
                        best, bad, res.best_step = vl, 0, step
                        best_state = copy.deepcopy(net.state_dict())
                    else:
                        bad += 1
                        if bad >= cfg.patience:
                            stop = True
                if step >= total or stop:
                    stop = True
                    break
            if stop:
                break
        if cfg.select_best:
            net.load_state_dict(best_state)
        else:
            res.best_step = step
        net.eval()
        res.seconds = time.perf_counter() - t0
        return res
    finally:
        torch.set_num_threads(threads)


def finetune_rows(
    ts: Any,
    states: Sequence[np.ndarray],
    rows: np.ndarray,
    vocab: Sequence[str],
    base_model: Any,
    cfg: FinetuneConfig,
) -> FinetuneResult:
    """:func:`finetune` on some rows (indices) of a :class:`training.train.TrainingSet`, whose
    cached lower-layer ``states`` are row-aligned with it."""
    return finetune(
        [states[i] for i in rows],
        ts.embeddings[rows],
        [ts.tasks[i] for i in rows],
        vocab,
        ts.labels[rows],
        ts.frame["prompt_hash"].iloc[rows].tolist(),
        base_model,
        cfg,
    )


def predict(
    res: FinetuneResult,
    states: Sequence[np.ndarray],
    tasks: Sequence[str | None],
    vocab: Sequence[str],
    batch_size: int = 64,
    *,
    amp: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(raw logits, fine-tuned embeddings) for every row; fp32 by default, as serving runs."""
    task_x = task_features(list(tasks), vocab)
    return _run(res.net, states, list(range(len(states))), task_x, res.device, batch_size, amp and res.amp)


# --------------------------------------------------------------------------------------------
# a router artefact


def train_finetuned_router(
    ts: Any,
    ft: FinetuneConfig,
    catalog: Any,
    out_dir: Path,
    *,
    encoder: Any,
    encoder_sha: str | None,
    cache_dir: Path,
    calibration_folds: int = 5,
    cascade_model: str | None = None,
    rule: str = "gap",
    extra: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, float]]:
    """``switchyard train router --kind finetune``: out-of-fold fine-tunes fit the calibration,
    a final fine-tune on all rows gives the head and the encoder layers; the cascade scorer is
    fitted on the fine-tuned embeddings (the ones serving will compute)."""
    from services.router.artifact import save_router

    from .cascade import fit_cascade
    from .splits import kfold, train_mask
    from .train import TrainingSet, fit_calibration, task_vocab

    if encoder.quantize_int8:
        raise ValueError("fine-tuning needs the fp32 encoder (int8 is a serving option)")
    t0 = time.perf_counter()
    unknown = [m for m in ts.models if m not in catalog.model_ids]
    if unknown:
        raise ValueError(f"models {unknown} are not in the catalog")
    enc = Encoder(encoder, device=pick_device(ft.device))
    hashes = ts.frame["prompt_hash"].tolist()
    states = HiddenStateCache(cache_dir, enc, ft.cached_layer).states(ts.frame["prompt"].tolist(), hashes)
    t_cache = time.perf_counter() - t0
    vocab = task_vocab(ts.tasks)
    prices = np.array([catalog.blended_price(m) for m in ts.models])
    folds = kfold(ts.frame["prompt_hash"], calibration_folds, ft.seed)
    oof = np.zeros(ts.labels.shape)
    for f in np.unique(folds):
        test = folds == f
        tr, te = np.flatnonzero(train_mask(ts.frame["prompt_hash"], test)), np.flatnonzero(test)
        res = finetune_rows(ts, states, tr, vocab, enc.model, ft)
        oof[te], _ = predict(res, [states[i] for i in te], [ts.tasks[i] for i in te], vocab)
        log.info("calibration fold %d: fine-tuned in %.0fs", f, res.seconds)
    t_oof = time.perf_counter() - t0
    calibration = fit_calibration(
        oof, ts.labels, ts.tasks, ts.models, prices, catalog.strong_model, rule=rule
    )
    res = finetune(states, ts.embeddings, ts.tasks, vocab, ts.labels, hashes, enc.model, ft)
    _, emb_ft = predict(res, states, ts.tasks, vocab)
    ts_ft = TrainingSet(ts.frame, emb_ft, ts.tasks, ts.labels, ts.models)
    cascade = fit_cascade(ts_ft, cascade_model, seed=ft.seed) if cascade_model else None
    elapsed = time.perf_counter() - t0
    from .train import sigmoid

    metrics = {
        "train_seconds": elapsed,
        "oof_seconds": t_oof,
        "hidden_cache_seconds": t_cache,
        "final_finetune_seconds": res.seconds,
        "rows": float(len(ts.frame)),
        "oof_brier": float(np.nanmean((sigmoid(oof) - ts.labels) ** 2)),
    }
    manifest = save_router(
        out_dir,
        kind="finetune",
        models=ts.models,
        task_vocab=vocab,
        head_params=res.head_params(),
        calibration=calibration,
        encoder=encoder,
        encoder_weights_sha256=encoder_sha,
        cascade=cascade,
        training={
            "config": ft.model_dump(),
            "rows": len(ts.frame),
            "datasets": sorted(ts.frame["dataset"].unique()),
            "metrics": metrics,
            "best_step": res.best_step,
            "history": res.history,
            **(extra or {}),
        },
        encoder_weights=res.encoder_weights(),
    )
    log.info("fine-tuned %s on %d rows in %.1fs", manifest.version, len(ts.frame), elapsed)
    return manifest, metrics
