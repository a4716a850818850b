"""Before any worker starts: does each model of the run fit the node's memory, and can its tokenizer pad and its
chat template (or its absence) be handled? `estuary validate`, `estuary data` and `estuary run` call these.

Memory. A model is refused when its weights at the dtype it is trained or served in, times `MEMORY_FACTOR`, exceed
the node's total memory (psutil). The parameter count comes from the folder's safetensors headers (no weights
read), else from the model's config on PyTorch's meta device. The factor 1.2 stands for what LoRA training adds
to the frozen weights: the adapter with its gradients and two AdamW moments in fp32 (under 2 % of the weights at
r ≤ 64 for the models here), a batch's activations and the runtime itself. It is a lower bound: a refused model
cannot train on this node even alone; a model that passes may still not fit beside the run's other workers (fewer
clients.workers then). Weights are loaded in host memory first (`estuary.lm.model.load_base`), so GPU workers
need it too. Client, DP-generator and teacher models count at models.dtype; the server LLM at the largest of
models.dtype (its zero-shot evaluation), server.dtype (served, `auto` resolved) and method_params.llm_train.dtype
(default float32) when the method trains it (`Strategy.server_use`). On a Ray cluster (`estuary.runtime.
cluster_address`: --address, ray.address, $ESTUARY_RAY_ADDRESS, a Ray Job) the nodes are not known here and the
check is skipped.

Tokenizers. No pad token: EOS pads (right padding, masked out of attention and loss), said once. Neither pad nor
EOS: refused, naming the model's field. No chat template on the server LLM: prompts are sent as plain text (the
messages' contents a blank line apart), said once.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from estuary.errors import ConfigError, ModelNotAvailable
from estuary.registry import get, server_uses
from estuary.runtime import cluster_address

if TYPE_CHECKING:
    from estuary.config import ExperimentConfig

MEMORY_FACTOR = 1.2
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GIB = 2**30


@dataclass(frozen=True)
class ModelUse:
    """One model of the run: the job field that names it, its spec, the dtype it is held in, whether it is the
    server LLM (prompted with chat messages)."""

    field: str
    spec: str
    dtype: str
    server: bool = False


def _server_dtype(cfg: ExperimentConfig, uses: set[str]) -> str:
    dtypes: list[str] = [cfg.models.dtype] if cfg.evaluation.server else []
    if uses:
        dtypes.append(cfg.server_config().resolved_dtype())
    if "train" in uses:
        dtypes.append(str((cfg.method_params.get("llm_train") or {}).get("dtype", "float32")))
    return max(dtypes, key=lambda d: DTYPE_BYTES.get(d, 4))


def model_uses(cfg: ExperimentConfig) -> list[ModelUse]:
    """Every model of the run, once each (the first field that names it)."""
    out: dict[str, ModelUse] = {}

    def add(field: str, spec: str | None, dtype: str, server: bool = False) -> None:
        old = out.get(spec or "")
        if not spec:
            return
        if old is None:
            out[spec] = ModelUse(field, spec, dtype, server)
            return
        wider = dtype if DTYPE_BYTES.get(dtype, 4) > DTYPE_BYTES.get(old.dtype, 4) else old.dtype
        out[spec] = ModelUse(old.field, spec, wider, old.server or server)

    if any(get(name).client_model for name in cfg.strategies()):
        add("models.client", cfg.models.client, cfg.models.dtype)
        for i in range(cfg.clients.count):
            spec = cfg.models.for_client(i)
            add(f"models.per_client.{i}" if i in cfg.models.per_client else "clients.groups[].model", spec,
                cfg.models.dtype)
    for name in cfg.strategies():
        gen = get(name).generator_model(cfg)
        field = "privacy.generator_model" if gen == cfg.privacy.generator_model else "method_params.teacher_model"
        add(field, gen, cfg.models.dtype)
    uses = server_uses(cfg.strategies())
    if cfg.evaluation.server or uses:
        add("models.server", cfg.server_config().model, _server_dtype(cfg, uses), server=True)
    return list(out.values())


def _safetensors_count(folder: Path) -> int | None:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with f.open("rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for key, meta in header.items():
            if key != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= int(d)
                total += n
    return total


def count_parameters(path: str) -> int | None:
    """Parameters of the model at `path` (a local folder): from its safetensors headers, else from its config on
    the meta device (tied weights counted once); None when neither can be read (a hub id offline)."""
    folder = Path(path)
    try:
        if folder.is_dir():
            counted = _safetensors_count(folder)
            if counted:
                return counted
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
        return sum(p.numel() for p in model.parameters())
    except (OSError, ValueError, KeyError, struct.error):
        return None


def node_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def memory_refusal(use: ModelUse, params: int, total: int) -> str | None:
    """The one-line refusal when `use` does not fit `total` bytes of memory (see the module docstring), or None."""
    weights = params * DTYPE_BYTES.get(use.dtype, 4)
    need = weights * MEMORY_FACTOR
    if need <= total:
        return None
    smaller = "" if use.dtype != "float32" else "; or models.dtype/server.dtype bfloat16 (half the bytes)"
    return (f"{use.field}: {use.spec} has {params / 1e9:.2f} G parameters, {weights / GIB:.1f} GiB of {use.dtype} "
            f"weights, about {need / GIB:.1f} GiB with LoRA training (×{MEMORY_FACTOR}), more than this node's "
            f"{total / GIB:.1f} GiB of memory; use a smaller model or a node with more memory{smaller}")


def _resolve(spec: str, prepare: bool) -> str | None:
    from estuary.models import resolve_model

    try:
        return resolve_model(spec, prepare=prepare)
    except ModelNotAvailable:
        return None


def check_memory(cfg: ExperimentConfig, paths: dict[str, str] | None = None, *, total: int | None = None,
                 cluster: bool = False) -> list[str]:
    """Refuse (ConfigError, one line) a model of the run that cannot fit the node's memory; lines to print.
    `paths`: spec → resolved folder (the runner's); otherwise resolved without preparing anything."""
    if cluster:
        return ["model memory: not checked (a Ray cluster's nodes are not known before it is joined)"]
    total = node_memory_bytes() if total is None else total
    lines = []
    for use in model_uses(cfg):
        path = (paths or {}).get(use.spec) or _resolve(use.spec, prepare=False)
        params = count_parameters(path) if path else None
        if params is None:
            lines.append(f"model memory for {use.spec}: not known yet (checked when the model is prepared)")
            continue
        why = memory_refusal(use, params, total)
        if why is not None:
            raise ConfigError(why)
        lines.append(f"model memory for {use.spec}: {params / 1e9:.2f} G parameters, about "
                     f"{params * DTYPE_BYTES.get(use.dtype, 4) * MEMORY_FACTOR / GIB:.1f} GiB in {use.dtype} "
                     f"(node: {total / GIB:.1f} GiB)")
    return lines


def tokenizer_notes(use: ModelUse, tokenizer: Any) -> list[str]:
    """Lines about `tokenizer`'s padding and chat template; ConfigError when it can pad with nothing."""
    lines = []
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"{use.field}: the tokenizer of {use.spec} has neither a pad token nor an EOS token, so batches "
                "cannot be padded; add \"pad_token\" (a token of its vocabulary) to its tokenizer_config.json, or "
                "use another model")
        lines.append(f"tokenizer of {use.spec}: no pad token; its EOS {tokenizer.eos_token!r} pads (masked out)")
    if use.server and not getattr(tokenizer, "chat_template", None):
        lines.append(f"server LLM {use.spec}: no chat template; its prompts are sent as plain text (the "
                     "messages a blank line apart)")
    return lines


def check_tokenizers(cfg: ExperimentConfig, paths: dict[str, str] | None = None) -> list[str]:
    """`tokenizer_notes` for every model of the run whose folder is at hand (others: when prepared)."""
    uses = model_uses(cfg)
    if not uses:
        return []  # nothing to load: transformers stays out of the driver
    from transformers import AutoTokenizer

    lines = []
    for use in uses:
        path = (paths or {}).get(use.spec) or _resolve(use.spec, prepare=False)
        if path is None or not Path(path).is_dir():
            continue
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{use.field}: the tokenizer of {use.spec} does not load ({str(exc).splitlines()[0]})"
                              ) from None
        lines += tokenizer_notes(use, tokenizer)
    return lines


def model_lines(cfg: ExperimentConfig, paths: dict[str, str] | None = None, *, address: str | None = None) -> list[str]:
    """`check_memory` then `check_tokenizers` (each refusal one ConfigError line): what `estuary validate`,
    `estuary data` and `estuary run` print about the run's models."""
    return check_memory(cfg, paths, cluster=bool(cluster_address(cfg.ray, address))) + check_tokenizers(cfg, paths)
