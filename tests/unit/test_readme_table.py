"""The README's "Supported backbones" table lists every registered id with the registry's facts."""

from __future__ import annotations

from pathlib import Path

from llm_backbones import get_spec, registered_ids

README = Path(__file__).parents[2] / "README.md"


def _rows() -> dict[str, list[str]]:
    text = README.read_text(encoding="utf-8")
    table = text.split("## Supported backbones", 1)[1].split("\n\n", 3)[2]
    rows = {}
    for line in table.splitlines():
        if line.startswith("| `"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def test_every_id_has_a_row_with_the_registry_facts() -> None:
    rows = _rows()
    assert list(rows) == registered_ids()
    for backbone_id, (_, family, parameters, hub, builder, layer, pad) in rows.items():
        spec = get_spec(backbone_id)
        assert (family, parameters, layer) == (spec.llm_family, spec.parameters, spec.layer_cls.__name__)
        assert hub == ("embedded (package assets)" if spec.embedded else spec.hf_hub_path)
        assert f"(`{spec.prompt_format}`)" in builder
        assert pad == f"`{spec.pad_policy_text}`"
