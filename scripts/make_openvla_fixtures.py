#!/usr/bin/env python
"""Reference fixtures for the whole OpenVLA policy (image + instruction -> action), by OpenVLA's OWN code.

Runs ONLY in a throw-away virtualenv with the versions OpenVLA pins (transformers 4.40.1, tokenizers 0.19.1,
timm 0.9.16; torch/torchvision that import together), never in the project's environment:

    /tmp/openvla-ref/bin/python scripts/make_openvla_fixtures.py \
        --openvla-mirror /work/.mirror/openvla+openvla/repo --out tests/golden/fixtures/openvla_policy
    /tmp/openvla-ref/bin/python scripts/make_openvla_fixtures.py --time 20     # timing only, prints JSON

OpenVLA's code (MIT) is read at run time: its three HF files (`prismatic/extern/hf/*_prismatic.py`) are taken
from a git mirror (`git show`) or from a folder (`--openvla-src`) into a temporary package and imported from
there; nothing of it is written into this repository. `remap_state_dicts_for_hf` is taken the same way from
`vla-scripts/extern/convert_openvla_weights_to_hf.py` to check the Prismatic key list.

Every number about the checkpoints (sizes, weights, images, instructions) comes from
`tests/openvla_reference_spec.py`, imported by file path.

Shims, both outside OpenVLA's code:
- `timm.create_model` as seen from modeling_prismatic's namespace also passes `depth=VISION_DEPTH` (the towers
  are cut to a few blocks); the image processor's data config comes from the full-depth timm model, as in
  OpenVLA's convert script.
- tokenizers 0.19.1 cannot read the embedded tokenizer.json (its BPE merges are written as pairs, the form of
  tokenizers >= 0.20): a copy with each merge joined as "a b" (the older format; no piece holds a space) is
  loaded instead. Same vocabulary, same merges.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib
import importlib.util
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPEC_PATH = REPO / "tests" / "openvla_reference_spec.py"
TOKENIZER_DIR = REPO / "src" / "llm_backbones" / "assets" / "llama2-tiny"
DEFAULT_MIRROR = Path("/work/.mirror/openvla+openvla/repo")
HF_DIR = "prismatic/extern/hf"
HF_FILES = ("configuration_prismatic.py", "modeling_prismatic.py", "processing_prismatic.py")
CONVERT_SCRIPT = "vla-scripts/extern/convert_openvla_weights_to_hf.py"
PACKAGE = "openvla_hf"
ATTN_IMPLEMENTATION = "sdpa"  # what 4.40.1 picks by default; eager cannot run predict_action (PROVENANCE.md)
SMALL_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
KEY_PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "tokenizers",
    "timm",
    "numpy",
    "pillow",
    "safetensors",
    "huggingface-hub",
)


def load_spec():
    module_spec = importlib.util.spec_from_file_location("openvla_reference_spec", SPEC_PATH)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


spec = load_spec()


# --------------------------------------------------------------------------------------------- OpenVLA's code
def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extract_openvla(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """OpenVLA's HF files (and the convert script) into work/openvla_hf/; returns where they came from."""
    package = work / PACKAGE
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    source: dict[str, Any] = {}
    if args.openvla_src:
        src = Path(args.openvla_src)
        for name in HF_FILES:
            shutil.copyfile(src / name, package / name)
        convert = src / Path(CONVERT_SCRIPT).name
        if convert.is_file():
            shutil.copyfile(convert, work / "convert_openvla_weights_to_hf.py")
        source["from"] = f"folder {src}"
    else:
        mirror = Path(args.openvla_mirror)
        commit = subprocess.run(
            ["git", "-C", str(mirror), "rev-parse", args.openvla_commit],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for name, target in [(f"{HF_DIR}/{n}", package / n) for n in HF_FILES] + [
            (CONVERT_SCRIPT, work / "convert_openvla_weights_to_hf.py")
        ]:
            blob = subprocess.run(
                ["git", "-C", str(mirror), "show", f"{commit}:{name}"], check=True, capture_output=True
            ).stdout
            target.write_bytes(blob)
        source["from"] = "github.com/openvla/openvla"
        source["commit"] = commit
    source["sha256"] = {f"{HF_DIR}/{n}": sha256(package / n) for n in HF_FILES}
    if (work / "convert_openvla_weights_to_hf.py").is_file():
        source["sha256"][CONVERT_SCRIPT] = sha256(work / "convert_openvla_weights_to_hf.py")
    return source


class _TimmWithDepth(types.ModuleType):
    """`timm` as modeling_prismatic sees it: create_model also passes depth=VISION_DEPTH; the rest is timm."""

    def __init__(self, timm_module: types.ModuleType, depth: int) -> None:
        super().__init__("timm")
        self._timm, self._depth = timm_module, depth
        self.__version__ = timm_module.__version__

    def create_model(self, *args: Any, **kwargs: Any):
        return self._timm.create_model(*args, depth=self._depth, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._timm, name)


def import_openvla(work: Path):
    import timm

    sys.path.insert(0, str(work))
    configuration = importlib.import_module(f"{PACKAGE}.configuration_prismatic")
    modeling = importlib.import_module(f"{PACKAGE}.modeling_prismatic")
    processing = importlib.import_module(f"{PACKAGE}.processing_prismatic")
    assert modeling.timm is timm
    modeling.timm = _TimmWithDepth(timm, spec.VISION_DEPTH)
    # the released checkpoints' files carry auto_map (the convert script's commented-out registration)
    configuration.OpenVLAConfig.register_for_auto_class()
    processing.PrismaticImageProcessor.register_for_auto_class("AutoImageProcessor")
    processing.PrismaticProcessor.register_for_auto_class("AutoProcessor")
    modeling.OpenVLAForActionPrediction.register_for_auto_class("AutoModelForVision2Seq")
    return types.SimpleNamespace(configuration=configuration, modeling=modeling, processing=processing)


def openvla_remap(work: Path):
    """`remap_state_dicts_for_hf` from OpenVLA's convert script (its module imports draccus/prismatic, so only
    the function and PROJECTOR_KEY_MAPPING are taken out of the file's syntax tree)."""
    path = work / "convert_openvla_weights_to_hf.py"
    if not path.is_file():
        return None
    tree = ast.parse(path.read_text())
    keep = [
        node
        for node in tree.body
        if (isinstance(node, ast.FunctionDef) and node.name == "remap_state_dicts_for_hf")
        or (
            isinstance(node, ast.Assign)
            and any(getattr(t, "id", None) == "PROJECTOR_KEY_MAPPING" for t in node.targets)
        )
    ]

    import torch

    namespace: dict[str, Any] = {"Dict": dict, "torch": torch}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(path), "exec"), namespace)
    return namespace["remap_state_dicts_for_hf"]


# ----------------------------------------------------------------------------------------------- tokenizer
def load_tokenizer(work: Path):
    """The embedded LLaMA-2 tokenizer, loaded as OpenVLA's convert script loads the hub's."""
    from transformers import AutoTokenizer

    data = json.loads((TOKENIZER_DIR / "tokenizer.json").read_text())
    merges = data["model"]["merges"]
    note = None
    if merges and isinstance(merges[0], list):
        assert not any(" " in a or " " in b for a, b in merges)
        data["model"]["merges"] = [f"{a} {b}" for a, b in merges]
        note = "merges rewritten from pairs to 'a b' strings (tokenizers 0.19.1 reads only that form)"
    directory = work / "llama2-tokenizer"
    directory.mkdir()
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    # the hub's Llama-2 names "LlamaTokenizer" (AutoTokenizer: LlamaTokenizerFast: inputs are input_ids and
    # attention_mask); the embedded config names PreTrainedTokenizerFast, which also returns token_type_ids,
    # and predict_action(**inputs) then fails in generate ("model_kwargs are not used: ['token_type_ids']")
    config = json.loads((TOKENIZER_DIR / "tokenizer_config.json").read_text())
    if config.get("tokenizer_class") != "LlamaTokenizer":
        note = (note + "; " if note else "") + (
            f"tokenizer_class {config.get('tokenizer_class')!r} -> 'LlamaTokenizer' as in "
            "meta-llama/Llama-2-7b-hf "
            "(else the processor also returns token_type_ids and predict_action(**inputs) raises in generate)"
        )
        config["tokenizer_class"] = "LlamaTokenizer"
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    tokenizer = AutoTokenizer.from_pretrained(directory, model_max_length=2048, padding_side="right")
    tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    tokenizer.init_kwargs.pop("add_prefix_space", None)
    assert type(tokenizer).__name__ == "LlamaTokenizerFast", type(tokenizer)
    assert tokenizer.pad_token_id == 32000, tokenizer.pad_token_id
    assert len(tokenizer) > spec.TEXT_CONFIG["vocab_size"] - 64
    return tokenizer, note


def compare_tokenizer_json(saved: Path) -> dict[str, Any]:
    embedded_path = TOKENIZER_DIR / "tokenizer.json"
    embedded, written = json.loads(embedded_path.read_text()), json.loads(saved.read_text())
    same = {}
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder"):
        same[key] = embedded.get(key) == written.get(key)
    em, wm = dict(embedded["model"]), dict(written["model"])
    em_merges = [" ".join(m) if isinstance(m, list) else m for m in em.pop("merges")]
    wm_merges = [" ".join(m) if isinstance(m, list) else m for m in wm.pop("merges")]
    same["model.vocab"] = em.pop("vocab") == wm.pop("vocab")
    same["model.merges"] = em_merges == wm_merges
    same["model (other fields)"] = em == wm
    embedded_added = {t["id"]: t["content"] for t in embedded["added_tokens"]}
    written_added = {t["id"]: t["content"] for t in written["added_tokens"]}
    return {
        "bytes": saved.stat().st_size,
        "sha256": sha256(saved),
        "embedded_sha256": sha256(embedded_path),
        "byte_identical_to_embedded": sha256(saved) == sha256(embedded_path),
        "same_as_embedded": same,
        "added_tokens_only_in_saved": {
            str(k): v for k, v in written_added.items() if k not in embedded_added
        },
    }


# --------------------------------------------------------------------------------------------- checkpoints
def tower_facts(model) -> dict[str, Any]:
    """Architecture facts of one full-depth timm VisionTransformer (timm 0.9.16 attributes)."""
    block = model.blocks[0]

    def norm(module):
        return (
            None
            if type(module).__name__ == "Identity"
            else {"type": type(module).__name__, "eps": module.eps}
        )

    act = block.mlp.act
    pool = model.attn_pool
    return {
        "embed_dim": model.embed_dim,
        "depth": len(model.blocks),
        "num_heads": block.attn.num_heads,
        "mlp_hidden": block.mlp.fc1.out_features,
        "patch_size": list(model.patch_embed.patch_size),
        "grid_size": list(model.patch_embed.grid_size),
        "class_token": model.cls_token is not None,
        "reg_tokens": model.num_reg_tokens,
        "no_embed_class": model.no_embed_class,
        "num_prefix_tokens": model.num_prefix_tokens,
        "pos_embed_shape": list(model.pos_embed.shape),
        "norm_pre": norm(model.norm_pre),
        "block_norm": norm(block.norm1),
        "final_norm": norm(model.norm),
        "fc_norm": norm(model.fc_norm),
        "act": type(act).__name__
        + (f"(approximate={act.approximate!r})" if hasattr(act, "approximate") else ""),
        "qkv_bias": block.attn.qkv.bias is not None,
        "qk_norm": type(block.attn.q_norm).__name__ != "Identity",
        "proj_bias": block.attn.proj.bias is not None,
        "mlp_bias": block.mlp.fc1.bias is not None,
        "patch_embed_bias": model.patch_embed.proj.bias is not None,
        "layer_scale": type(block.ls1).__name__ != "Identity",
        "global_pool": model.global_pool,
        "attn_pool": None
        if pool is None
        else {
            "latent_shape": list(pool.latent.shape),
            "num_heads": pool.num_heads,
            "mlp_hidden": pool.mlp.fc1.out_features,
            "norm_eps": pool.norm.eps,
            "qkv_bias": pool.q.bias is not None,
        },
        "head": type(model.head).__name__,
        "dynamic_img_size": model.dynamic_img_size,
    }


_TOWERS: dict[tuple, dict[str, Any]] = {}


def tower_data(timm_id: str, img_size: int, act_layer: str | None) -> dict[str, Any]:
    """As the convert script: timm.create_model(id, pretrained=False, num_classes=0, img_size, act_layer),
    then resolve_model_data_config. Cached per (id, size, act) (the result is a function of those)."""
    import timm
    import timm.data

    key = (timm_id, img_size, act_layer)
    if key not in _TOWERS:
        model = timm.create_model(
            timm_id, pretrained=False, num_classes=0, img_size=img_size, act_layer=act_layer
        )
        data_cfg = timm.data.resolve_model_data_config(model)
        _TOWERS[key] = {
            "timm_id": timm_id,
            "img_size": img_size,
            "act_layer_override": act_layer,
            "data_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_cfg.items()},
            "arch": tower_facts(model),
        }
        del model
    return _TOWERS[key]


def build(name: str, openvla, tokenizer):
    import torch

    entry = spec.CHECKPOINTS[name]
    fused = entry["vision_backbone_id"].startswith(("dinoclip", "dinosiglip"))
    config = openvla.configuration.OpenVLAConfig(
        vision_backbone_id=entry["vision_backbone_id"],
        llm_backbone_id="llama2-7b-pure",
        arch_specifier="no-align+fused-gelu-mlp" if fused else "no-align+gelu-mlp",
        image_resize_strategy=entry["strategy"],
        llm_max_length=2048,
        norm_stats=spec.NORM_STATS,
        n_action_bins=256,
        pad_token_id=32000,
        pad_to_multiple_of=64,
        text_config=dict(spec.TEXT_CONFIG),
        torch_dtype=torch.float32,
        attn_implementation=ATTN_IMPLEMENTATION,
    )
    config.text_config.torch_dtype = torch.float32
    assert config.use_fused_vision_backbone == fused
    assert config.text_config.use_cache and config.text_config.pad_token_id == 32000

    model = openvla.modeling.OpenVLAForActionPrediction(config).float().eval()
    assert model.config._attn_implementation == ATTN_IMPLEMENTATION
    assert model.language_model.config._attn_implementation == ATTN_IMPLEMENTATION
    state = model.state_dict()
    with torch.no_grad():
        for key, tensor in state.items():
            assert tensor.dtype == torch.float32, (key, tensor.dtype)
            tensor.copy_(torch.from_numpy(spec.weight(key, tuple(tensor.shape), name)))
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, torch.from_numpy(spec.weight(key, tuple(tensor.shape), name))), key

    input_sizes, interpolations, means, stds, towers = [], [], [], [], []
    for idx, timm_id in enumerate(config.timm_model_ids):
        tower = tower_data(timm_id, config.image_sizes[idx], config.timm_override_act_layers[idx])
        data_cfg = tower["data_config"]
        input_sizes.append((3, config.image_sizes[idx], config.image_sizes[idx]))
        interpolations.append(data_cfg["interpolation"])
        means.append(tuple(data_cfg["mean"]))
        stds.append(tuple(data_cfg["std"]))
        towers.append(tower)
    image_processor = openvla.processing.PrismaticImageProcessor(
        use_fused_vision_backbone=config.use_fused_vision_backbone,
        image_resize_strategy=config.image_resize_strategy,
        input_sizes=input_sizes,
        interpolations=interpolations,
        means=means,
        stds=stds,
    )
    processor = openvla.processing.PrismaticProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, image_processor, processor, towers


# ------------------------------------------------------------------------------------------------ one case
def floats(tensor) -> Any:
    """float32 values as Python floats (exact; json writes their repr)."""
    return tensor.detach().float().tolist()


def features(tensor) -> dict[str, Any]:
    return {
        "shape": list(tensor.shape),
        "head": floats(tensor[0, :4, :8]),
        "last": floats(tensor[0, -1, :8]),
        "sum": float(tensor.double().sum()),
    }


def run_predict_action(model, inputs) -> tuple[Any, dict[str, Any]]:
    """predict_action exactly as called by users, with generate and forward wrapped to keep what they saw."""
    seen: dict[str, Any] = {"logits": []}
    generate, forward = model.generate, model.forward

    def kept_generate(*args: Any, **kwargs: Any):
        out = generate(*args, **kwargs)
        seen["args"], seen["kwargs"], seen["out"] = args, kwargs, out
        return out

    def kept_forward(*args: Any, **kwargs: Any):
        out = forward(*args, **kwargs)
        seen["logits"].append(out.logits[:, -1, :].detach().clone())
        return out

    model.generate, model.forward = kept_generate, kept_forward
    try:
        action = model.predict_action(**inputs, unnorm_key="bridge_orig", do_sample=False)
    finally:
        del model.generate, model.forward
    return action, seen


def run_case(model, processor, index: int, size: tuple[int, int], instruction: str) -> tuple[dict, dict]:
    import numpy as np
    import torch
    from PIL import Image

    image = Image.fromarray(spec.image(index, *size))
    text = spec.prompt(instruction)
    inputs = processor(text, image)
    pixel_values = inputs["pixel_values"]
    assert pixel_values.dtype == torch.float32
    flat = pixel_values.flatten()
    sample = torch.from_numpy(spec.sample_indices(flat.numel()))
    per_channel = pixel_values[0].double()
    with torch.no_grad():
        vision = model.vision_backbone(pixel_values)
        projected = model.projector(vision)
        action, seen = run_predict_action(model, inputs)

    action_dim = len(spec.NORM_STATS["bridge_orig"]["action"]["q01"])
    predict_ids = seen["args"][0]
    out = seen["out"]
    generated = out[0, -action_dim:].tolist()
    assert len(seen["logits"]) == action_dim
    first = seen["logits"][0][0]
    assert int(first.argmax()) == generated[0]
    # the same first step from one plain forward: ids with 29871, an all-ones mask of their length
    with torch.no_grad():
        plain = model(
            input_ids=predict_ids, attention_mask=torch.ones_like(predict_ids), pixel_values=pixel_values
        ).logits[0, -1]
    top = torch.topk(first, 5)
    lo, hi = spec.ACTION_TOKEN_MIN, spec.ACTION_TOKEN_MAX
    case = {
        "index": index,
        "size": list(size),
        "instruction": instruction,
        "prompt": text,
        "input_ids": inputs["input_ids"][0].tolist(),
        "attention_mask": inputs["attention_mask"][0].tolist(),
        "predict_input_ids": predict_ids[0].tolist(),
        "pixel_values": {
            "shape": list(pixel_values.shape),
            "channel_sum": per_channel.sum(dim=(1, 2)).tolist(),
            "channel_sumsq": (per_channel * per_channel).sum(dim=(1, 2)).tolist(),
            "sample": floats(flat[sample]),
        },
        "vision_features": features(vision),
        "projector_features": features(projected),
        "first_logits_actions": floats(first[lo : hi + 1]),
        "first_logits_top5": [
            [int(i), float(v)] for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ],
        "generate_output_ids": out[0].tolist(),
        "generated_ids": generated,
        "all_action_tokens": all(lo <= t <= hi for t in generated),
        "action": np.asarray(action, dtype=np.float64).tolist(),
    }
    checks = {
        "generate_kwargs": sorted(seen["kwargs"]),
        "generate_attention_mask_len": int(seen["kwargs"]["attention_mask"].shape[-1]),
        "predict_input_ids_len": int(predict_ids.shape[-1]),
        "plain_forward_max_abs_diff": float((plain - first).abs().max()),
    }
    return case, checks


# ------------------------------------------------------------------------------------------ prismatic keys
def prismatic_keys(model, remap) -> dict[str, list[str]]:
    """The Prismatic training checkpoint's names ({group: [names]}) of a dinosiglip model: the inverse of
    convert_openvla_weights_to_hf.remap_state_dicts_for_hf, checked by running that function forward."""
    groups: dict[str, list[str]] = {"vision_backbone": [], "projector": [], "llm_backbone": []}
    inverse_projector = {"fc1": "0", "fc2": "2", "fc3": "4"}
    hf_names = list(model.state_dict())
    for key in hf_names:
        if key.startswith("vision_backbone.featurizer."):
            rest = key[len("vision_backbone.featurizer.") :]
            if rest.endswith(".scale_factor"):
                rest = rest[: -len("scale_factor")] + "gamma"
            groups["vision_backbone"].append("dino_featurizer." + rest)
        elif key.startswith("vision_backbone.fused_featurizer."):
            groups["vision_backbone"].append(
                "siglip_featurizer." + key[len("vision_backbone.fused_featurizer.") :]
            )
        elif key.startswith("projector."):
            _, layer, leaf = key.split(".")
            groups["projector"].append(f"projector.{inverse_projector[layer]}.{leaf}")
        elif key.startswith("language_model."):
            groups["llm_backbone"].append("llm." + key[len("language_model.") :])
        else:
            raise ValueError(f"unexpected HF name {key}")
    if remap is not None:
        forward = remap(
            dict.fromkeys(groups["vision_backbone"], 0),
            dict.fromkeys(groups["projector"], 0),
            dict.fromkeys(groups["llm_backbone"], 0),
            use_fused_vision_backbone=True,
        )
        assert sorted(forward) == sorted(hf_names), set(forward) ^ set(hf_names)
    return groups


# -------------------------------------------------------------------------------------------------- writing
def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in KEY_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def write_cases(path: Path, cases: list[dict]) -> None:
    """One case a line (compact): the sampled pixel values make each case long."""
    path.write_text("[\n" + ",\n".join(json.dumps(c, separators=(",", ":")) for c in cases) + "\n]\n")


def saved_tensors(directory: Path, model, name: str) -> tuple[list[dict], dict[str, Any]]:
    import torch
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    shapes: dict[str, dict] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                assert torch.equal(tensor, torch.from_numpy(spec.weight(key, tuple(tensor.shape), name))), key
                shapes[key] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
    state = list(model.state_dict())
    listed = [{"name": k, **shapes[k]} for k in state if k in shapes]
    notes = {
        "files": [f.name for f in files],
        "dropped_by_save": [k for k in state if k not in shapes],
        "not_in_state_dict": sorted(set(shapes) - set(state)),
        "count": len(listed),
        "parameters": sum(int(__import__("math").prod(t["shape"])) for t in listed),
    }
    return listed, notes


def make_fixtures(args: argparse.Namespace) -> None:
    import torch

    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="openvla-ref-") as tmp:
        work = Path(tmp)
        source = extract_openvla(args, work)
        openvla = import_openvla(work)
        remap = openvla_remap(work)
        tokenizer, tokenizer_note = load_tokenizer(work)
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        summary: dict[str, Any] = {"checkpoints": {}, "towers": {}}
        for name in spec.CHECKPOINTS:
            torch.manual_seed(0)
            model, image_processor, processor, towers = build(name, openvla, tokenizer)
            saved = work / "saved" / name
            model.save_pretrained(saved)
            image_processor.save_pretrained(saved)
            processor.save_pretrained(saved)
            target = out / name
            target.mkdir()
            for file in SMALL_FILES:
                if (saved / file).is_file():
                    shutil.copyfile(saved / file, target / file)
            tensors, tensor_notes = saved_tensors(saved, model, name)
            write_json(target / "tensors.json", tensors)
            cases, checks = [], []
            for index, size, instruction in spec.cases(name):
                case, check = run_case(model, processor, index, size, instruction)
                cases.append(case)
                checks.append(check)
                print(
                    f"{name} case {index} {size} {instruction!r}: ids {case['generated_ids']} "
                    f"action tokens {case['all_action_tokens']}",
                    flush=True,
                )
            write_cases(target / "cases.json", cases)
            if model.config.use_fused_vision_backbone:
                write_json(target / "prismatic_keys.json", prismatic_keys(model, remap))
            summary["checkpoints"][name] = {
                "written_by_save_pretrained": sorted(p.name for p in saved.iterdir()),
                "tokenizer_json": compare_tokenizer_json(saved / "tokenizer.json"),
                "tensors": tensor_notes,
                "towers": [t["timm_id"] for t in towers],
                "cases_with_7_action_tokens": sum(c["all_action_tokens"] for c in cases),
                "cases": len(cases),
                "checks": checks,
            }
            for tower in towers:
                summary["towers"][tower["timm_id"]] = tower
            del model, processor, image_processor
        summary["source"] = source
        summary["tokenizer_note"] = tokenizer_note
        summary["versions"] = versions()
        summary["attn_implementation"] = ATTN_IMPLEMENTATION
        summary["eager"] = check_eager(openvla, tokenizer)
        summary["torch_threads"] = torch.get_num_threads()
        write_json(out / "timm_towers.json", summary["towers"])
        (out / "PROVENANCE.md").write_text(provenance(args, summary))
        if args.summary:
            write_json(Path(args.summary), summary)


def check_eager(openvla, tokenizer) -> str:
    """What predict_action does under attn_implementation="eager" (not used for the fixtures)."""
    global ATTN_IMPLEMENTATION
    saved, ATTN_IMPLEMENTATION = ATTN_IMPLEMENTATION, "eager"
    try:
        name = next(iter(spec.CHECKPOINTS))
        model, _, processor, _ = build(name, openvla, tokenizer)
        index, size, instruction = spec.cases(name)[0]
        try:
            run_case(model, processor, index, size, instruction)
            return "ran"
        except Exception as error:  # noqa: BLE001 - reported, not handled
            return f"{type(error).__name__}: {str(error).splitlines()[0]}"
    finally:
        ATTN_IMPLEMENTATION = saved


# ------------------------------------------------------------------------------------------------ provenance
def provenance(args: argparse.Namespace, summary: dict[str, Any]) -> str:
    v = summary["versions"]
    source = summary["source"]
    lines = [
        "# OpenVLA policy fixtures: provenance",
        "",
        "Made by `scripts/make_openvla_fixtures.py` with OpenVLA's own HF classes (`OpenVLAConfig`,",
        "`OpenVLAForActionPrediction`, `PrismaticImageProcessor`, `PrismaticProcessor`) under the versions "
        "OpenVLA",
        "pins, fp32 on CPU, in a throw-away virtualenv:",
        "",
        "```",
        "python3 -m venv /tmp/openvla-ref",
        "/tmp/openvla-ref/bin/pip install torch==2.14.1 torchvision==0.29.1",
        "/tmp/openvla-ref/bin/pip install transformers==4.40.1 tokenizers==0.19.1 timm==0.9.16 'numpy<2' "
        "pillow safetensors",
        "/tmp/openvla-ref/bin/python scripts/make_openvla_fixtures.py "
        + (
            f"--openvla-src {args.openvla_src}"
            if args.openvla_src
            else f"--openvla-mirror {args.openvla_mirror}"
        )
        + f" --out {args.out}",
        "```",
        "",
        f"- OpenVLA: {source['from']}"
        + (f", commit `{source['commit']}`" if "commit" in source else "")
        + "; MIT licence. Its code was read at run time from that source; none of it is in this repository.",
    ]
    for path, digest in source["sha256"].items():
        lines.append(f"  - `{path}` sha256 `{digest}`")
    lines += [
        "- Versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items())
        + f"; torch threads {summary['torch_threads']}.",
        f'- Attention: `attn_implementation="{summary["attn_implementation"]}"` (what transformers 4.40.1 '
        "picks by default). predict_action appends 29871 to input_ids but not to the attention mask, so the "
        "first step's mask is one shorter than the sequence; SDPA drops an all-ones mask "
        "(`_ignore_causal_mask_sdpa`) and uses is_causal. Under eager the same call gives: "
        f"`{summary['eager']}`.",
        "- Shims (outside OpenVLA's code):",
        "  - `timm.create_model`, as modeling_prismatic's namespace sees it, also passes "
        f"`depth={spec.VISION_DEPTH}`"
        " (each tower cut to that many blocks; the featurizer reads block `depth - 2`). The image "
        "processors' data"
        " configs come from full-depth models, as in the convert script.",
        f"  - tokenizer: {summary['tokenizer_note']}. Loaded from `src/llm_backbones/assets/llama2-tiny` as "
        "the"
        " convert script loads LLaMA-2's (`AutoTokenizer.from_pretrained(dir, model_max_length=2048,"
        ' padding_side="right")`, `add_special_tokens({"pad_token": "<PAD>"})`: PAD = 32000).',
        "  - `register_for_auto_class` as in the convert script's (commented-out) hub push, so config.json "
        "and"
        " preprocessor_config.json carry `auto_map` like the released checkpoints.",
        "- Weights: every state-dict tensor set to `openvla_reference_spec.weight(name, shape)` and checked "
        "equal after"
        " setting and after reading the saved safetensors back; no weight file is kept.",
        "",
        "## Files",
        "",
        "Per checkpoint folder: the small files `save_pretrained` wrote (config.json, "
        "generation_config.json,",
        "preprocessor_config.json, tokenizer_config.json, special_tokens_map.json; processor_config.json "
        "where",
        "written), `tensors.json` ([{name, shape, dtype}] in state-dict order, read back from the "
        "safetensors),",
        "`cases.json` (one case a line) and, for the fused checkpoint, `prismatic_keys.json` (the Prismatic",
        "training checkpoint's names per group, the inverse of the convert script's "
        "`remap_state_dicts_for_hf`,",
        "checked by running that function on them). `timm_towers.json`: the table below as data.",
        "",
        "cases.json fields: `prompt`, `input_ids` (processor), `attention_mask`, `predict_input_ids` (what",
        "predict_action passed to generate: + 29871), `pixel_values` "
        "{shape, channel_sum, channel_sumsq (float64),",
        "sample: the values at `sample_indices(numel)` of the flattened tensor}, `vision_features` and",
        "`projector_features` {shape, head = [0, :4, :8], last = [0, -1, :8], sum (float64)}, "
        "`first_logits_actions`",
        "(first decode step, ids 31744..31999, taken from inside predict_action's generate), "
        "`first_logits_top5`",
        "[[id, value]] over the whole 32064-row vocabulary, `generate_output_ids` (generate's whole output),",
        "`generated_ids` (its last 7), `all_action_tokens`, `action` (predict_action's 7 floats). Floats "
        "are float32",
        "values written as Python float reprs (exact), sums and actions float64.",
        "",
        "| checkpoint | tensors | parameters | cases | 7 action tokens | tokenizer.json |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in summary["checkpoints"].items():
        tj = c["tokenizer_json"]
        differ = [k for k, same in tj["same_as_embedded"].items() if not same]
        lines.append(
            f"| {name} | {c['tensors']['count']} | {c['tensors']['parameters']:,} | {c['cases']} | "
            f"{c['cases_with_7_action_tokens']} | {tj['bytes']:,} B, sha256 `{tj['sha256'][:16]}…`; "
            f"differs from the embedded one in {differ or 'nothing'}, "
            f"added {tj['added_tokens_only_in_saved']} |"
        )
    dropped = {n: c["tensors"]["dropped_by_save"] for n, c in summary["checkpoints"].items()}
    lines += [
        "",
        f"save_pretrained dropped or renamed no tensor: {not any(dropped.values())}"
        + ("" if not any(dropped.values()) else f" ({dropped})")
        + ".",
        "",
        "## timm 0.9.16 towers (full depth, `timm.create_model(id, pretrained=False, num_classes=0, img_size,"
        " act_layer)`)",
        "",
        "| timm id | dim | depth | heads | mlp | cls | reg | no_embed_class | pos_embed | norm_pre | "
        "block/final"
        " norm eps | act | qkv bias | patch bias | LayerScale | global_pool | attn_pool | fc_norm |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for timm_id, t in summary["towers"].items():
        a = t["arch"]
        pool = a["attn_pool"]
        lines.append(
            f"| {timm_id} (act override {t['act_layer_override']}) | {a['embed_dim']} | {a['depth']} | "
            f"{a['num_heads']} | {a['mlp_hidden']} | {a['class_token']} | {a['reg_tokens']} | "
            f"{a['no_embed_class']} |"
            f" {a['pos_embed_shape']} | {a['norm_pre']['eps'] if a['norm_pre'] else 'none'} | "
            f"{a['block_norm']['eps']} / {a['final_norm']['eps'] if a['final_norm'] else 'none'} | "
            f"{a['act']} | "
            f"{a['qkv_bias']} | {a['patch_embed_bias']} | {a['layer_scale']} | {a['global_pool']!r} | "
            + (
                f"latent {pool['latent_shape']}, {pool['num_heads']} heads, mlp {pool['mlp_hidden']}, eps "
                f"{pool['norm_eps']}"
                if pool
                else "none"
            )
            + f" | {a['fc_norm']['eps'] if a['fc_norm'] else 'none'} |"
        )
    lines += [
        "",
        "All: patch 14 (in1k: 16), qk_norm False, proj/mlp biases True, head Identity (num_classes=0),",
        "dynamic_img_size False. The featurizer is `get_intermediate_layers(n={depth - 2})`: patch_embed, "
        "_pos_embed",
        "(no_embed_class: add pos_embed to the patches, then prepend cls/reg; else prepend, then add), "
        "norm_pre,",
        "blocks, the output of block depth-2, prefix tokens dropped, no final norm.",
        "",
        "| timm id | input_size | interpolation | mean | std | crop_pct | crop_mode |",
        "|---|---|---|---|---|---|---|",
    ]
    for timm_id, t in summary["towers"].items():
        d = t["data_config"]
        lines.append(
            f"| {timm_id} | {d['input_size']} | {d['interpolation']} | {d['mean']} | {d['std']} | "
            f"{d['crop_pct']} | {d.get('crop_mode')} |"
        )
    lines += [
        "",
        "OpenVLA's image processor ignores the data config's input_size and crop_pct (it uses the "
        "checkpoint's",
        "image size and crop_pct=1.0) and keeps its interpolation, mean and std.",
        "",
        "## Observed in OpenVLA's code under these versions",
        "",
        "- generation_config.json (made by `GenerationConfig.from_model_config` at init) holds bos 1, eos "
        "2, pad",
        "  32000, so predict_action's generate stops at EOS 2 (then the last 7 ids would include prompt "
        "ids); no",
        "  case here generated 2.",
        "- config.json's text_config holds only non-default LlamaConfig values (4.40.1 defaults apply: silu,",
        "  rope_theta 10000, bos 1, eos 2, no tied embeddings, no attention bias).",
        "- Letterbox fill is `int(mean * 255)` per channel (truncated: SigLIP/in1k 127, DINOv2 123,116,103, "
        "CLIP",
        "  122,116,104); with two towers the fill is the last tower's. resize-naive resizes to (s, s); the "
        "others",
        "  resize the shorter side to s (int size) and center-crop s x s. Bicubic, antialias=True, PIL "
        "images.",
        "- The generated tokenizer.json differs from the embedded one only by the added `<PAD>` (32000) and "
        "the",
        "  pair template's type ids (LlamaTokenizerFast rebuilds the post-processor); single-sequence ids "
        "agree.",
        "- convert_openvla_weights_to_hf.py renames LayerScale `.gamma` only on the fused path: a "
        "single-tower",
        "  DINOv2 Prismatic checkpoint would keep `.gamma` and fail its strict load into the HF model.",
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ time
def time_policy(args: argparse.Namespace, n: int) -> None:
    import torch
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="openvla-ref-") as tmp:
        work = Path(tmp)
        extract_openvla(args, work)
        openvla = import_openvla(work)
        tokenizer, _ = load_tokenizer(work)
        name = next(iter(spec.CHECKPOINTS))  # dinosiglip-224-naive
        model, _, processor, _ = build(name, openvla, tokenizer)
        index, size, instruction = spec.cases(name)[0]
        image = Image.fromarray(spec.image(index, *size))
        text = spec.prompt(instruction)

        def step():
            inputs = processor(text, image)
            return model.predict_action(**inputs, unnorm_key="bridge_orig", do_sample=False)

        with torch.no_grad():
            step()  # warm-up, not timed
            times = []
            for _ in range(n):
                start = time.perf_counter()
                step()
                times.append((time.perf_counter() - start) * 1000.0)
    print(
        json.dumps(
            {"median_ms": statistics.median(times), "min_ms": min(times), "n": n, "versions": versions()}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--openvla-src", help="folder holding OpenVLA's three HF files (and optionally the convert script)"
    )
    source.add_argument(
        "--openvla-mirror", default=str(DEFAULT_MIRROR), help="git directory of openvla/openvla"
    )
    parser.add_argument("--openvla-commit", default="HEAD")
    parser.add_argument("--out", default=str(REPO / "tests" / "golden" / "fixtures" / "openvla_policy"))
    parser.add_argument("--summary", help="also write the run's whole summary (JSON) here")
    parser.add_argument("--time", type=int, metavar="N", help="only time N processor + predict_action calls")
    args = parser.parse_args()

    if args.time:  # stdout: the JSON line only
        logging.getLogger("transformers").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
        time_policy(args, args.time)
    else:
        make_fixtures(args)


if __name__ == "__main__":
    main()
