"""`llm-backbones`: list the registry and run the demo on the embedded default."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from llm_backbones.errors import LLMBackbonesError

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()
_state = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(exc: Exception) -> None:
    if _state["debug"]:
        raise exc
    console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=1)


def _registry_rows() -> list[dict[str, str]]:
    from llm_backbones.registry import get_spec, registered_ids

    rows = []
    for backbone_id in registered_ids():
        spec = get_spec(backbone_id)
        rows.append(
            {
                "id": backbone_id,
                "family": spec.family,
                "parameters": spec.parameters,
                "hf_hub_path": spec.hf_hub_path,
                "prompt_format": spec.prompt_builder.format_key or spec.prompt_builder.__name__,
                "decoder_layer": spec.layer_cls.__name__,
                "pad_policy": spec.pad_policy_text,
                "adds_bos": str(spec.adds_bos).lower(),
            }
        )
    return rows


@app.command("list")
def list_backbones(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every registered backbone id: family, parameters, hub path, prompt format, decoder layer, pad policy."""
    rows = _registry_rows()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Registered LLM backbones")
    for column in rows[0]:
        table.add_column(column, no_wrap=column == "id", overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


@app.command()
def demo(
    backbone: Annotated[str, typer.Option(help="Backbone id.")] = "llama2-tiny-pure",
    model_path: Annotated[Path | None, typer.Option(help="Local HF-format directory replacing the hub path.")] = None,
    metrics_json: Annotated[Path | None, typer.Option(help="Write the demo's numbers to this JSON file.")] = None,
) -> None:
    """Build a backbone through the registry, show its summary, render an OpenVLA prompt, run a forward pass."""
    try:
        _demo(backbone, model_path, metrics_json)
    except (LLMBackbonesError, OSError) as exc:
        _fail(exc)


def _demo(backbone_id: str, model_path: Path | None, metrics_json: Path | None) -> None:
    import torch

    from llm_backbones import get_llm_backbone_and_tokenizer

    start = time.perf_counter()
    with console.status(f"Building {backbone_id} ..."):
        backbone, tokenizer = get_llm_backbone_and_tokenizer(backbone_id, model_path=model_path)
    build_s = time.perf_counter() - start

    summary = Table(title=f"Backbone {backbone_id}", show_header=False)
    n_params = sum(p.numel() for p in backbone.parameters())
    facts = {
        "class": type(backbone).__name__,
        "model": f"{type(backbone.llm).__name__} ({n_params:,} parameters)",
        "hidden size (embed_dim)": str(backbone.embed_dim),
        "tokenizer": f"{len(tokenizer)} tokens, BOS {tokenizer.bos_token}={tokenizer.bos_token_id}, "
        f"PAD {tokenizer.pad_token}={backbone.pad_token_id}",
        "embedding rows": str(backbone.llm.get_input_embeddings().weight.shape[0]),
        "attention": backbone.llm.config._attn_implementation,
        "FSDP unit": backbone.transformer_layer_cls.__name__,
        "half precision": str(backbone.half_precision_dtype),
        "prompt builder": backbone.prompt_builder_fn.__name__,
        "build time": f"{build_s:.2f} s",
    }
    for key, value in facts.items():
        summary.add_row(key, value)
    console.print(summary)

    builder = backbone.prompt_builder_fn("openvla")
    builder.add_turn("human", "What action should the robot take to put the carrot in the pot?")
    prompt = builder.get_prompt()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    console.print("[bold]Generation prompt[/]:", repr(prompt), highlight=False)
    console.print(f"[bold]Token ids[/]: {ids[0].tolist()}", highlight=False)

    backbone.eval()
    with torch.no_grad():
        out = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    console.print(
        f"[bold]Forward pass[/]: logits {tuple(out.logits.shape)}, loss {out.loss.item():.4f} "
        f"(uniform over {out.logits.shape[-1]} rows would be {torch.log(torch.tensor(out.logits.shape[-1])).item():.4f})",
        highlight=False,
    )
    if metrics_json is not None:
        metrics = {
            "backbone": backbone_id,
            "parameters": n_params,
            "build_seconds": build_s,
            "prompt": prompt,
            "input_ids": ids[0].tolist(),
            "loss": out.loss.item(),
            "seconds": time.perf_counter() - start,
        }
        metrics_json.write_text(json.dumps(metrics, indent=2) + "\n")


if __name__ == "__main__":
    app()
