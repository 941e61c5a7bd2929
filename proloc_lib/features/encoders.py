"""The two frozen encoders: ProtT5 (per-residue sequence features) and ViT-B/16 (image tokens).

The paper's encoders are ProtT5-XL-U50 (``Rostlab/prot_t5_xl_half_uniref50-enc``, 1024-d per
residue) and timm's ViT-B/16 with ImageNet-21k weights (197 tokens x 768). Their weights come
from the Hugging Face Hub, which cannot be reached offline. The offline profiles (demo, smoke)
therefore build the *same classes* -- ``T5EncoderModel`` with a ProtT5-style tokenizer, and the
same timm ViT architecture with the same input transform -- from small configs with seeded
random weights. That exercises every line of the real extraction path (tokenization, padding,
end-token removal, transforms, token layout, feature store) without a download.

Random-weight features carry no pretrained knowledge: every number computed from them tests the
pipeline, not biology, and must be labelled as coming from random-weight encoders
(``fingerprint()["random_weights"]`` is True and travels into the feature store and manifests).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch

from proloc_lib.core.network import _OFFLINE_HINT, OfflineError, check_reachable
from proloc_lib.core.runtime import resolve_device
from proloc_lib.data.sequences import clean_sequence, prott5_format

SEQUENCE_KEYS = {"model", "revision", "pretrained", "config", "init_seed"}
IMAGE_KEYS = {"model", "pretrained", "overrides", "init_seed", "crop_pct", "crop_mode", "interpolation"}
# Image preprocessing keys of the encoder config (default: the timm pretrained config of the model).
# The published vit.py (transformers ViTImageProcessor of google/vit-base-patch16-224-in21k) resizes
# every image to 224 x 224, bilinear, no crop, mean = std = 0.5: crop_mode "squash" + crop_pct 1.0 +
# interpolation "bilinear". They enter the store fingerprint (through data_config), so a store made
# with another preprocessing is stale.
PREPROCESSING_CHOICES = {"crop_mode": ("center", "squash"), "interpolation": ("bilinear", "bicubic")}
PREPROCESSING_KEYS = ("crop_pct", *PREPROCESSING_CHOICES)
# architecture keys of a random-weight ProtT5-style encoder (schema.T5Arch lists the same, typed)
T5_ARCH_KEYS = {"d_model", "d_ff", "num_layers", "num_heads", "d_kv", "relative_attention_num_buckets",
                "relative_attention_max_distance", "feed_forward_proj", "layer_norm_epsilon",
                "dropout_rate", "initializer_factor"}
# The residue rows (what checkpoints record); a store also keeping the </s> row says so in its
# extraction settings (store.END_ROWS), not here, so checkpoints made before still match.
PROTT5_PREPROCESSING = "prott5: UZOB->X, space-separated, </s> dropped"
IMAGE_TOKENS = "forward_features: all tokens (cls + patches) after final norm"
# Random-weight ViTs take their default input transform (mean/std, interpolation, crop) from this
# pretrained tag of the same architecture, so the demo transform path is the paper's.
DATA_CONFIG_TAG = "orig_in21k"   # the published weights; its data config equals augreg_in21k's
TINY_VOCAB_DIRNAME = "tiny-prott5-vocab"

# ProtT5's spiece.model: <pad>=0, </s>=1, <unk>=2, then one '▁'-prefixed piece per residue
# code (25 incl. X and the rare B/O/U/Z), then 100 <extra_id_*> sentinels added by T5Tokenizer
# (vocab size 128). The residue order follows ProtT5's (frequency-like) order; for
# random-weight models only the conventions matter, not the exact ids.
PROTT5_RESIDUE_ORDER = "ALGVSREDTIPKFQNYMHWCXBOUZ"


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_url(repo_id: str) -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"{endpoint}/api/models/{repo_id}"


def _cached_file(repo_id: str, filenames: list[str], revision: str | None = None,
                 cache_dir: str | None = None) -> str | None:
    """Path of the first of ``filenames`` in the local HF cache, or None (never touches network)."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        try:
            hit = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
        except Exception:  # malformed id or cache layout: treat as not cached
            hit = None
        if isinstance(hit, str):  # a sentinel object means "known to be absent"
            return hit
    return None


def _ensure_downloadable(repo_id: str, what: str) -> None:
    """Fail at once (not after minutes of retries) when the hub cannot serve ``repo_id``."""
    if _hub_offline():
        raise OfflineError(f"{what} '{repo_id}' is not in the local Hugging Face cache and "
                           f"HF_HUB_OFFLINE is set: {_OFFLINE_HINT}.")
    try:
        check_reachable([_hub_url(repo_id)])
    except OfflineError as exc:
        raise OfflineError(f"cannot download {what} '{repo_id}': {exc}") from None


def _check_keys(cfg: dict, allowed: set[str], what: str) -> None:
    if not isinstance(cfg, dict):
        raise ValueError(f"{what} config must be a mapping, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {what} config (allowed: {sorted(allowed)})")
    if "model" not in cfg or "pretrained" not in cfg:
        # 'pretrained' has no default: silently random weights, or a download, must never be implied
        raise ValueError(f"{what} config needs 'model' and 'pretrained' (got keys {sorted(cfg)})")
    if not isinstance(cfg["pretrained"], bool):
        raise ValueError(f"{what} config 'pretrained' must be true or false, got {cfg['pretrained']!r}")


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# -- tiny ProtT5-style vocabulary ----------------------------------------------------------------
# sentencepiece's compiled normalisation table (double-array trie + targets, 1,030 bytes, zlib +
# base64 here) for one rule: U+3000 IDEOGRAPHIC SPACE -> " ". Made once with
#   SentencePieceTrainer.train(..., model_type="char", normalization_rule_tsv=<"3000\t20">)
# and kept as a constant, so the vocabulary's bytes (and its sha in the store fingerprint) do
# not depend on the installed sentencepiece. Residue letters pass through it unchanged.
_CHARSMAP_B64 = (
    "eNod02P0FgYUB+D31P+0bNvmwrJtu1Zr2bZt27bNtbVst9Wq5dqy3fN2z3m+/L7cD/d3AyGBQGBE6MDtiKECA0JI"
    "FAjOgGD8A2EIR1giEJ5IRCQKkYlGVGIQnVjEJA6xiUdcEhCf4IqEJCExyUhKCpKTipSkITXpSEsG0pOJjGQhM9nI"
    "SnZ+JCc5+Ilc5CE3+chLAfJTiIIUoTDFKEoJilOKkpShNOUoSwXKU4mKVKEy1ahKDapTi5rUoTb1qEsD6vMzDWlM"
    "I5rwC035leY0oyUtaE0r2tKG9rSjIx3oTCe60oXudKMnPehNL/rSh/70Y2Dw4AxmEEMZwnCGMTJYEUYzirGMYTzj"
    "mMgEJjOJqUxhOtOYyQxmM4u5zGE+81jIAhaziKUsYTnLWMkKVrOKtaxhPevYyAY2s4mtbGE729jJDnazi73s4Tf2"
    "8Tv7OcAfHORPDnOIoxzhOMc4yQlOc4qznOE857jIBS5zib+4wlX+5h+ucYPr/MtNbnOLu9zhPvd4yAP+4xGP+Z+n"
    "POE5z3jJC17zire84T3v+MgHPvOJr3z5/nvfAAc3grk="
)


def _tiny_charsmap() -> bytes:
    import base64
    import zlib

    return zlib.decompress(base64.b64decode(_CHARSMAP_B64))


def _prott5_vocab_bytes() -> bytes:
    from sentencepiece import sentencepiece_model_pb2 as spm_pb

    model = spm_pb.ModelProto()
    kind = spm_pb.ModelProto.SentencePiece.Type
    for piece, typ in (("<pad>", kind.CONTROL), ("</s>", kind.CONTROL), ("<unk>", kind.UNKNOWN)):
        p = model.pieces.add()
        p.piece, p.score, p.type = piece, 0.0, typ
    for i, aa in enumerate(PROTT5_RESIDUE_ORDER):
        p = model.pieces.add()
        # '▁'-prefixed like ProtT5: with the dummy prefix, "M K" splits into exactly '▁M', '▁K'
        p.piece, p.score, p.type = "\u2581" + aa, -float(i + 1), kind.NORMAL
    ts = model.trainer_spec
    ts.model_type = spm_pb.TrainerSpec.UNIGRAM
    ts.vocab_size = len(model.pieces)
    ts.pad_id, ts.eos_id, ts.unk_id, ts.bos_id = 0, 1, 2, -1  # T5 has no BOS
    ts.pad_piece, ts.eos_piece, ts.unk_piece = "<pad>", "</s>", "<unk>"
    ns = model.normalizer_spec
    # A real (tiny) compiled normalisation table, never an empty one: several transformers 5.x
    # releases (5.10-5.19) build a Precompiled normalizer from any non-None charsmap and fail on
    # b"" ("Cannot parse precompiled_charsmap"); ProtT5's own spiece.model carries a full NFKC one.
    ns.name = "user_defined"
    ns.precompiled_charsmap = _tiny_charsmap()
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = True
    ns.escape_whitespaces = True
    return model.SerializeToString(deterministic=True)


def build_prott5_vocab(out_dir) -> Path:
    """Write ``spiece.model`` (ProtT5 conventions) into ``out_dir``; reuse it when identical.

    Built from a protobuf description rather than trained, so it is byte-for-byte deterministic
    and needs no corpus. Written to a temporary name and renamed, so concurrent builders are safe.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "spiece.model"
    data = _prott5_vocab_bytes()
    if target.is_file() and target.read_bytes() == data:
        return target
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".spiece-", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)
    return target


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "proloc-ihs"
    try:
        path.mkdir(parents=True, exist_ok=True)
        return path
    except OSError:  # read-only home (some clusters): fall back to the temp dir
        path = Path(tempfile.gettempdir()) / f"proloc-ihs-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
        path.mkdir(parents=True, exist_ok=True)
        return path


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """transformers >= 4.56 renamed from_pretrained's ``torch_dtype`` to ``dtype`` (old name warns)."""
    import transformers
    from packaging.version import Version

    return {"dtype": dtype} if Version(transformers.__version__) >= Version("4.56") else {"torch_dtype": dtype}


def _load_t5_tokenizer(source: str, **kwargs):
    from transformers import T5Tokenizer

    # legacy=True: every space-separated residue gets its own '▁X' piece, as ProtT5 was trained.
    # transformers 4.x needs it said (non-legacy mode would split differently); in 5.x T5Tokenizer
    # is tokenizers-backed, converts spiece.model on load and simply records the flag.
    return T5Tokenizer.from_pretrained(source, do_lower_case=False, legacy=True, **kwargs)


# -- sequence encoder ----------------------------------------------------------------------------
class SequenceEncoder:
    """Frozen ProtT5-style encoder; per-residue features (the end token's row on request)."""

    def __init__(self, model, tokenizer, model_id: str, revision: str, device: str, dtype: torch.dtype,
                 random_weights: bool, config: dict | None = None, init_seed: int | None = None,
                 vocab_sha: str | None = None, commit: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.revision = revision
        self.hidden_size = int(model.config.d_model)
        self.device = device
        self.dtype = dtype
        self.random_weights = random_weights
        self._config = config
        self._init_seed = init_seed
        self._vocab_sha = vocab_sha
        self._commit = commit

    def fingerprint(self) -> dict:
        fp = {"kind": "sequence", "model_id": self.model_id, "revision": self.revision,
              "preprocessing": PROTT5_PREPROCESSING, "dtype": str(self.dtype).replace("torch.", ""),
              "hidden_size": self.hidden_size, "random_weights": self.random_weights}
        if self.random_weights:
            fp.update(config=dict(sorted(self._config.items())), init_seed=self._init_seed,
                      vocab_sha=self._vocab_sha)
        elif self._commit:
            fp["commit"] = self._commit  # 'main' moves; the resolved commit pins the weights
        return fp

    def __repr__(self) -> str:
        tag = "RANDOM weights" if self.random_weights else f"revision {self.revision}"
        return f"SequenceEncoder({self.model_id}, {tag}, hidden {self.hidden_size}, {self.device}, {self.dtype})"

    @torch.inference_mode()
    def embed_batch(self, seqs: list[str], *, end_token: bool = False) -> list[torch.Tensor]:
        """Per-residue float32 CPU tensors of shape (len(seq), hidden), one per sequence; with
        ``end_token``, (len(seq) + 1, hidden): the ``</s>`` position's row last, as the published
        prott5.py keeps it (the store saves it apart, see ``store.END_SUFFIX``)."""
        if not seqs:
            return []
        seqs = [clean_sequence(s) for s in seqs]  # idempotent on clean input; guards the token count
        enc = self.tokenizer([prott5_format(s) for s in seqs], add_special_tokens=True,
                             padding="longest", return_tensors="pt")
        n_tokens = enc["attention_mask"].sum(dim=1).tolist()
        for s, n in zip(seqs, n_tokens):
            if n != len(s) + 1:  # one token per residue + </s>; anything else breaks residue alignment
                raise RuntimeError(f"tokenizer gave {n} tokens for a {len(s)}-residue sequence "
                                   f"(expected {len(s) + 1}); ProtT5 convention broken")
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Residues come first, then </s>, then padding: keep exactly the residue rows (+ </s>).
        extra = 1 if end_token else 0
        return [hidden[i, :len(s) + extra].float().cpu() for i, s in enumerate(seqs)]


def load_sequence_encoder(cfg: dict, device: str = "auto", cache_dir: str | None = None) -> SequenceEncoder:
    """Pretrained ProtT5 (network or local HF cache) or a seeded random-weight ProtT5-style model."""
    from transformers import T5Config, T5EncoderModel

    _check_keys(cfg, SEQUENCE_KEYS, "sequence encoder")
    device = resolve_device(device)
    model_id = str(cfg["model"])
    if cfg["pretrained"]:
        extra = sorted({"config", "init_seed"} & set(cfg))
        if extra:
            raise ValueError(f"sequence encoder config keys {extra} apply only to pretrained: false")
        revision = str(cfg.get("revision", "main"))
        # fp16 on GPU: the checkpoint is the half-precision release (Rostlab's recommended use);
        # fp32 on CPU, where half matmuls are slow or unsupported.
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        cached = (_cached_file(model_id, ["config.json"], revision, cache_dir)
                  and _cached_file(model_id, ["spiece.model"], revision, cache_dir)
                  and _cached_file(model_id, ["model.safetensors", "pytorch_model.bin"], revision, cache_dir))
        if not cached:
            _ensure_downloadable(model_id, "sequence model")
        common = {"revision": revision, "cache_dir": cache_dir, "local_files_only": bool(cached)}
        tokenizer = _load_t5_tokenizer(model_id, **common)
        model = T5EncoderModel.from_pretrained(model_id, **common, **_dtype_kwarg(dtype))
        commit = getattr(model.config, "_commit_hash", None)
        return SequenceEncoder(model.to(device), tokenizer, model_id, revision, device, dtype,
                               random_weights=False, commit=commit)

    if "revision" in cfg:
        raise ValueError("sequence encoder config 'revision' applies only to pretrained: true")
    if not isinstance(cfg.get("config"), dict) or "init_seed" not in cfg:
        raise ValueError("a random-weight sequence encoder needs 'config' (a mapping) and 'init_seed'")
    arch = dict(cfg["config"])
    bad = sorted(set(arch) - T5_ARCH_KEYS)
    if bad:  # T5Config swallows unknown kwargs silently; a typo must not change the model unnoticed
        raise ValueError(f"unknown key(s) {bad} in sequence encoder 'config' (allowed: {sorted(T5_ARCH_KEYS)})")
    init_seed = int(cfg["init_seed"])
    vocab_dir = Path(cache_dir) if cache_dir else _user_cache_dir()
    vocab_file = build_prott5_vocab(vocab_dir / TINY_VOCAB_DIRNAME)
    # The same loader as the real model: T5Tokenizer.from_pretrained on a folder with spiece.model.
    tokenizer = _load_t5_tokenizer(str(vocab_file.parent))
    config = T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                      is_encoder_decoder=False, use_cache=False, **arch)
    # fork_rng: seed only this initialisation, leave the caller's global RNG stream untouched.
    # Built on CPU so the same seed gives the same weights whatever the device.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = T5EncoderModel(config)
    # float32 everywhere: the tiny model costs nothing and demo numbers then agree across CPU/GPU.
    return SequenceEncoder(model.to(device=device, dtype=torch.float32), tokenizer, model_id, "random-init",
                           device, torch.float32, random_weights=True, config=arch, init_seed=init_seed,
                           vocab_sha=_file_sha(vocab_file))


# -- image encoder -------------------------------------------------------------------------------
class ImageEncoder:
    """Frozen timm ViT; returns all tokens of ``forward_features`` (cls + patches, final norm)."""

    def __init__(self, model, model_id: str, device: str, dtype: torch.dtype, random_weights: bool,
                 overrides: dict | None = None, init_seed: int | None = None, preprocessing: dict | None = None):
        import timm.data

        self.model = model.eval()
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self.random_weights = random_weights
        self._overrides = overrides or {}
        self._init_seed = init_seed
        self.preprocessing = dict(preprocessing or {})
        # the model's own data config, then the profile's explicit preprocessing keys on top
        self.data_config = {**timm.data.resolve_data_config(model=model), **self.preprocessing}
        self.transform = timm.data.create_transform(**self.data_config, is_training=False)
        self.hidden_size = int(model.num_features)
        c, h, w = self.data_config["input_size"]
        with torch.inference_mode():  # token count from the model itself, not from assumptions
            probe = model.forward_features(torch.zeros(1, c, h, w, device=device, dtype=dtype))
        self.n_tokens = int(probe.shape[1])

    def fingerprint(self) -> dict:
        fp = {"kind": "image", "model_id": self.model_id, "tokens": IMAGE_TOKENS,
              "n_tokens": self.n_tokens, "hidden_size": self.hidden_size,
              "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.data_config.items())},
              "dtype": str(self.dtype).replace("torch.", ""), "random_weights": self.random_weights}
        if self.preprocessing:
            fp["preprocessing"] = dict(sorted(self.preprocessing.items()))
        if self.random_weights:
            fp.update(overrides=dict(sorted(self._overrides.items())), init_seed=self._init_seed)
        return fp

    def __repr__(self) -> str:
        tag = "RANDOM weights" if self.random_weights else "pretrained"
        return f"ImageEncoder({self.model_id}, {tag}, {self.n_tokens}x{self.hidden_size}, {self.device})"

    @torch.inference_mode()
    def embed_batch(self, images: list) -> torch.Tensor:
        """(B, n_tokens, hidden) float32 CPU tensor for a list of PIL images."""
        if not images:
            return torch.empty(0, self.n_tokens, self.hidden_size)
        x = torch.stack([self.transform(im if im.mode == "RGB" else im.convert("RGB")) for im in images])
        out = self.model.forward_features(x.to(device=self.device, dtype=self.dtype))
        return out.float().cpu()


def _data_config_source(arch: str):
    """Pretrained cfg whose transform a random-weight model of ``arch`` should use (or None)."""
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(f"{arch}.{DATA_CONFIG_TAG}")
    except Exception:
        return None


def image_preprocessing(cfg: dict) -> dict:
    """The explicit preprocessing keys of an image encoder config, validated."""
    out = {}
    if "crop_pct" in cfg:
        v = cfg["crop_pct"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise ValueError(f"image encoder 'crop_pct' must be a number in (0, 1], got {v!r}")
        out["crop_pct"] = float(v)
    for key, allowed in PREPROCESSING_CHOICES.items():
        if key in cfg:
            if cfg[key] not in allowed:
                raise ValueError(f"image encoder '{key}' must be one of {allowed}, got {cfg[key]!r}")
            out[key] = cfg[key]
    return out


def load_image_encoder(cfg: dict, device: str = "auto") -> ImageEncoder:
    """Pretrained timm ViT (network or local HF cache) or a seeded random-weight one."""
    import timm
    from timm.models import get_pretrained_cfg

    _check_keys(cfg, IMAGE_KEYS, "image encoder")
    preprocessing = image_preprocessing(cfg)
    device = resolve_device(device)
    name = str(cfg["model"])
    # float32 throughout: ViT-B is cheap next to ProtT5-XL, and features are stored in fp16 anyway.
    dtype = torch.float32
    if cfg["pretrained"]:
        extra = sorted({"overrides", "init_seed"} & set(cfg))
        if extra:
            raise ValueError(f"image encoder config keys {extra} apply only to pretrained: false")
        try:
            pcfg = get_pretrained_cfg(name)
        except Exception:
            pcfg = None
        if pcfg is None:
            raise ValueError(f"timm has no pretrained weights registered for '{name}'")
        overlay = None
        if pcfg.hf_hub_id:
            cached = _cached_file(pcfg.hf_hub_id, ["model.safetensors", "pytorch_model.bin"])
            if cached:
                # Load the cached hub file directly: no hub round trip. custom_load=False because the
                # hub copy is a timm state dict, not the original .npz that custom_load refers to
                # (newer timm resets it itself, older 1.0.x releases do not).
                overlay = {"file": cached, "custom_load": False}
            else:
                _ensure_downloadable(pcfg.hf_hub_id, "image model")
        elif pcfg.url:
            try:
                check_reachable([pcfg.url])
            except OfflineError as exc:
                raise OfflineError(f"cannot download image model '{name}': {exc}") from None
        model = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay)
        return ImageEncoder(model.to(device=device, dtype=dtype), name, device, dtype, random_weights=False,
                            preprocessing=preprocessing)

    if "init_seed" not in cfg:
        raise ValueError("a random-weight image encoder needs 'init_seed'")
    overrides = dict(cfg.get("overrides") or {})
    init_seed = int(cfg["init_seed"])
    arch = name.split(".")[0]
    source = _data_config_source(arch)
    kwargs = {"pretrained_cfg": source} if source is not None else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs, **overrides)
    return ImageEncoder(model.to(device=device, dtype=dtype), name, device, dtype, random_weights=True,
                        overrides=overrides, init_seed=init_seed, preprocessing=preprocessing)
