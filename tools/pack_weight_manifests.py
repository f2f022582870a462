"""Regenerate engine/manifests/<name>.json from the golden manifests.

The shared golden folder is not installed with the package, but `stepfoley weights check`
must work on any machine, so the key -> shape lists it needs are packed into compact JSON
files inside engine/ (the subset of the golden format that
engine.checkpoints.check_against_manifest reads). Run after the golden manifests change:

    python tools/pack_weight_manifests.py [GOLDEN_DIR]

The BigVGAN-v2 44.1 kHz entry is not in the golden set (the reference fixtures do not cover
that vocoder); it is derived here from engine.codec.bigvgan's `v2_44k_512x` preset, which
follows NVIDIA's published config.json, and is marked as such.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OUT_DIR = REPO / "engine" / "manifests"

# manifest file stem -> name used in engine.weights
GOLDEN = {
    "flow_small_16k": "flow_small_16k",
    "flow_small_44k": "flow_small_44k",
    "flow_medium_44k": "flow_medium_44k",
    "flow_large_44k": "flow_large_44k",
    "flow_large_44k_v2": "flow_large_44k_v2",
    "vae_16k": "vae_16k",
    "vae_44k": "vae_44k",
    "bigvgan_16k_generator": "bigvgan_16k",
    "synchformer_vfeat_extractor": "synchformer",
}

# The subset of the golden manifest format that engine.checkpoints.check_against_manifest reads.
KEPT_FIELDS = ("official_checkpoint_file", "keys_dropped_or_ignored_on_load", "num_parameters", "state_dict_numel")
KEPT_ENTRY_FIELDS = ("key", "shape", "legacy_key")


def pack_golden(path: Path, name: str) -> dict:
    m = json.loads(path.read_text())
    packed = {"name": name, "source": f"{m['reference']}@{m['reference_commit'][:12]} {m['constructor']}"}
    packed.update({k: m[k] for k in KEPT_FIELDS if k in m})
    packed["state_dict"] = [{k: e[k] for k in KEPT_ENTRY_FIELDS if k in e} for e in m["state_dict"]]
    return packed


def legacy_weight_norm_key(key: str) -> str | None:
    for modern, legacy in ((".parametrizations.weight.original0", ".weight_g"), (".parametrizations.weight.original1", ".weight_v")):
        if key.endswith(modern):
            return key[: -len(modern)] + legacy
    return None


def pack_bigvgan_v2() -> dict:
    import torch

    from stepfoley.engine.codec.bigvgan import BigVGAN, BigVGANConfig

    with torch.device("meta"):
        model = BigVGAN(BigVGANConfig.preset("v2_44k_512x"))
    entries = []
    for key, value in model.state_dict().items():
        entry = {"key": key, "shape": list(value.shape)}
        if legacy_weight_norm_key(key):
            entry["legacy_key"] = legacy_weight_norm_key(key)
        entries.append(entry)
    return {
        "name": "bigvgan_v2_44k",
        "source": "derived from engine.codec.bigvgan preset v2_44k_512x (NVIDIA config.json); not a reference fixture",
        "official_checkpoint_file": "bigvgan_v2_44khz_128band_512x/bigvgan_generator.pt (entry \"generator\")",
        "keys_dropped_or_ignored_on_load": [],
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "state_dict_numel": sum(v.numel() for v in model.state_dict().values()),
        "state_dict": entries,
    }


def write_compact(manifest: dict, path: Path) -> None:
    """One tensor per line: small, and diffs stay readable. Written to a temp name, checked, renamed."""
    head = json.dumps({k: v for k, v in manifest.items() if k != "state_dict"})
    rows = ",\n".join(json.dumps(e) for e in manifest["state_dict"])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(head[:-1] + ', "state_dict": [\n' + rows + "\n]}\n")
    json.loads(tmp.read_text())
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    golden = Path(argv[0]) if argv else Path(os.environ.get("STEPFOLEY_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
    manifests = [pack_golden(golden / "manifests" / f"{stem}.json", name) for stem, name in GOLDEN.items()]
    manifests.append(pack_bigvgan_v2())
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    for m in manifests:
        path = OUT_DIR / f"{m['name']}.json"
        write_compact(m, path)
        total += path.stat().st_size
    print(f"wrote {len(manifests)} manifests to {OUT_DIR} ({total} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
