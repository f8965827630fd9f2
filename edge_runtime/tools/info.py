"""`edge-infer info`: an engine directory in a screenful, and whether each build's stamp fits this machine
(reported, not enforced: info is how one finds out why run or check refuses)."""
from edge_runtime import backends
from edge_runtime.core.engine_dir import EngineDir


def describe(engine: EngineDir) -> str:
    """`edge-infer info`: the manifest in a screenful, and whether each build's stamp fits this machine."""
    m, task, prov = engine.manifest, engine.task, engine.manifest["provenance"]
    first = engine.segments[0]["inputs"]
    labels = task["labels"]
    shown = ", ".join(map(str, labels[:10])) + (f", … ({len(labels)} in all)" if len(labels) > 10 else "")
    commit = prov.get("git_commit")
    ctrl = engine.controller
    lines = [
        f"engine      {engine.name} ({engine.root}), schema {m['schema']} v{m['schema_version']}",
        f"task        {task['kind']} on {task['dataset']}, labels: {shown}",
        "input       " + "; ".join(f"{i['name']} ({', '.join(map(str, i['shape']))}) {i['dtype']}" for i in first),
        f"segments    {len(engine.segments)} files, {sum(s['bytes'] for s in engine.segments) / 1024:.1f} KiB, "
        f"{sum(s['params'] for s in engine.segments):,} params",
        f"controller  {ctrl['predictor']['file']}, {ctrl['policy']['file']} + {ctrl['policy_arrays']['file']}, "
        f"{ctrl['projection']['file']} ({len(ctrl['features']['names'])} features, "
        f"{ctrl['features']['projection_dims']} projected)",
        f"reference   {m['reference'].get('samples', '?')} {m['reference'].get('split', '')} inputs "
        f"({m['reference']['file']})",
        f"provenance  git {commit[:12] if commit else 'unknown'}{' (dirty)' if prov.get('git_dirty') else ''}, "
        f"dataset {prov.get('dataset')}, preset {prov.get('preset')}, config sha256 "
        f"{str(prov.get('config_sha256'))[:12]}…, checkpoint {prov.get('checkpoint')}",
    ]
    for backend, precision, label, stamp in engine.builds():
        fits = backends.stamp_fit(stamp)
        versions = ", ".join(f"{k} {val}" for k, val in stamp.get("versions", {}).items())
        lines.append(f"build       {label}: {backend} {precision}, opset {stamp.get('opset')}; {versions}; on "
                     f"{stamp.get('device', {}).get('machine')} {stamp.get('device', {}).get('system')}; this machine "
                     f"{'fits its stamp' if all(f.ok for f in fits) else 'does NOT fit its stamp'}:")
        for f in fits:
            lines.append(f"  {'ok ' if f.ok else 'NO '} {f.item:<12} built {f.built}, here {f.here}"
                         + (f" ({f.note})" if f.note else ""))
    measured = m.get("bench", [])
    heads = [f"{b['backend']} {b['precision']} {b['threads']}t ms" for b in measured]
    lines += ["", "| depth | chain | MFLOPs | val acc % |" + "".join(f" {h} |" for h in heads),
              "|---|---|---|---|" + "---|" * len(heads)]
    for var in engine.variants:
        lat = "".join(f" {b['variant_ms'].get(str(var['depth']), float('nan')):.3f} |" for b in measured)
        lines.append(f"| {var['depth']} | {' '.join(map(str, var['chain']))} | {var['flops'] / 1e6:.3f} | "
                     f"{var['val_accuracy'] * 100:.2f} |{lat}")
    if not measured:
        lines.append("(no latency measured here yet: edge-infer bench --engine-dir DIR)")
    return "\n".join(lines)
