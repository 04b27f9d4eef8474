"""``mmx embed`` and ``mmx search``: use a trained space (see :mod:`mmx.pipeline.embed`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mmx.pipeline.cli_output import console
from mmx.pipeline.options import device_option, json_option, quiet_option
from mmx.pipeline.ranking import index_option


def _queries(files: tuple[str, ...], texts: tuple[str, ...]) -> list[tuple[str, dict]]:
    """``[(modality, item)]`` for files (modality by extension) and inline texts, in the order given."""
    from mmx.pipeline.embed import modality_of_file

    out = []
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
        out.append((modality_of_file(path).value, {"id": Path(path).stem, "uri": str(Path(path).resolve()), "text": ""}))
    from mmx.extract.decode import TEXT_MAX_CHARS

    for i, t in enumerate(texts):
        if len(t) > TEXT_MAX_CHARS:  # refused before anything is normalised or tokenised
            raise ValueError(f"--text query {i + 1} has {len(t):,} characters; at most {TEXT_MAX_CHARS:,} "
                             "are read from a text, so shorten it")
    out += [("text", {"id": f"text-{i + 1}", "uri": "", "text": t}) for i, t in enumerate(texts)]
    if not out:
        raise click.UsageError("nothing to embed: give files, --text or --manifest")
    return out


def _manifest_items(path: str) -> list[tuple[str, dict]]:
    from mmx.extract.manifest import read_manifest
    from mmx.extract.runner import manifest_items

    manifest = read_manifest(path)
    return [(m.value, {**it, "uri": it["uri"]}) for m in manifest.modalities for it in manifest_items(manifest, m)]


def embed_all(space, queries: list[tuple[str, dict]], on_items=None) -> dict:
    """Embeddings of ``queries`` in their given order: ``{"emb", "id", "modality", "label", "uri"}``.
    ``on_items(n)``: called as each batch of ``n`` items is embedded (a progress bar)."""
    import numpy as np

    from mmx.cache.modality import Modality
    from mmx.pipeline.embed import embed_items

    emb = np.zeros((len(queries), space.cfg.embed_dim), np.float32)
    for modality in dict.fromkeys(m for m, _ in queries):
        rows = [i for i, (m, _) in enumerate(queries) if m == modality]
        emb[rows] = embed_items(space, Modality.parse(modality), [queries[i][1] for i in rows], on_items=on_items)
    bad = [queries[i][1]["id"] for i in np.flatnonzero(~np.isfinite(emb).all(1))]
    if bad:
        raise ValueError(f"{space.run}: the embeddings of {', '.join(bad[:5])} are not finite (NaN or inf); "
                         "nothing meaningful can be written or searched with them")
    return {"emb": emb, "id": np.array([q["id"] for _, q in queries], dtype=str),
            "modality": np.array([m for m, _ in queries], dtype=str),
            "label": np.array([str(q.get("label") or "") for _, q in queries], dtype=str),
            "uri": np.array([q["uri"] or q["text"] for _, q in queries], dtype=str)}


@click.command("embed")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.argument("inputs", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--text", "texts", multiple=True, help="A text to embed (repeatable).")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Embed every item of a manifest (a gallery for 'mmx search --gallery').")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write emb (rows of unit length), id, modality, label, uri to this .npz.")
@json_option("each embedding (one JSON object a line)")
@quiet_option()
@device_option()
@click.pass_context
def embed_cmd(ctx, run, inputs, texts, manifest, output, device):
    """Embed INPUTS (image, audio, video files) and --text into RUN's joint space.

    \b
    The backbone and preprocessing are those of the stores RUN trained on (from their
    metadata), then RUN's model; the result is comparable with RUN's own embeddings.
    Examples:
      mmx embed runs/RUN photo.png clip.mp4 --text "a spoken seven" --json
      mmx embed runs/RUN --manifest data/mine/manifest.fetched.csv -o gallery.npz
      mmx embed runs/RUN --text "a spoken seven" -o seven.npz
    """
    from mmx.pipeline.embed import open_space

    queries = (_manifest_items(manifest) if manifest else []) + (_queries(inputs, texts) if inputs or texts else [])
    if not queries:
        raise click.UsageError("nothing to embed: give files, --text or --manifest")
    con = console(ctx)
    space = open_space(run, device, con.warn)
    counts = {m: sum(1 for q, _ in queries if q == m) for m in dict.fromkeys(m for m, _ in queries)}
    con.line(f"embedding {len(queries)} item(s) ({', '.join(f'{m} {n}' for m, n in counts.items())}) on {space.device}")
    bar = _progress_bar(con, len(queries))
    try:
        out = embed_all(space, queries, on_items=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if output:
        from mmx.pipeline.embed import save_gallery

        save_gallery(output, out)
    elif not con.json:
        for i in range(len(out["id"])):
            con.line(f"{out['id'][i]}  {out['modality'][i]}  [{' '.join(f'{x:.3f}' for x in out['emb'][i][:4])} ...]")
    dims = out["emb"].shape[1]
    con.summary(f"wrote {output}: {len(out['id'])} embeddings of {dims} dimensions" if output else
                f"{len(out['id'])} embeddings of {dims} dimensions (-o FILE writes them, --json prints them)")
    if con.json:
        for i in range(len(out["id"])):
            click.echo(json.dumps({"id": out["id"][i], "modality": out["modality"][i], "embedding": [round(float(x), 6) for x in out["emb"][i]]}))


def _progress_bar(con, total: int):
    """A tqdm bar on stderr counting embedded items (none with --quiet or for a single item)."""
    if con.quiet or total < 2:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="item", file=click.get_text_stream("stderr"), desc="embed")


def _gallery(run: str, split: str, targets: list[str] | None, gallery: str | None) -> dict:
    """Rows to rank: a file written by ``mmx embed -o``, or RUN's embeddings of ``split`` (names in ``targets``)."""
    import numpy as np

    from mmx.cache.files import load_npz
    from mmx.eval.runs import check_gallery, load_embeddings
    from mmx.eval.search import UNIT_NORM_KEY, unit_rows

    if gallery:
        g = check_gallery(load_npz(gallery), gallery, ("id", "modality", "label", "uri"))
        unit = bool(g.pop(UNIT_NORM_KEY, False))
        keep = np.isin(g["modality"], targets) if targets else np.ones(len(g["id"]), bool)
        g = {k: v[keep] for k, v in g.items()}  # a copy of emb, so it may be scaled in place below
        return g if unit else {**g, "emb": unit_rows(g["emb"])}
    embs = load_embeddings(run, split)
    names = targets or [n for n in embs if not n.endswith(".late")]
    missing = [n for n in names if n not in embs]
    if missing:
        raise ValueError(f"{run}: no {split} embeddings named {', '.join(missing)}; it has {', '.join(embs)}")
    return {"emb": unit_rows(np.concatenate([embs[n]["emb"] for n in names])),  # a new array: scaled in place
            "id": np.concatenate([embs[n]["id"] for n in names]),
            "modality": np.concatenate([[n] * len(embs[n]["id"]) for n in names]).astype(str),
            "label": np.concatenate([embs[n]["label"] for n in names]),
            "uri": np.array([""] * sum(len(embs[n]["id"]) for n in names), dtype=str)}


def _locations(manifest: str | None, ids) -> list[str]:
    if not manifest:
        return [""] * len(ids)
    from mmx.extract.manifest import read_manifest

    m = read_manifest(manifest)
    where = {r.id: (m.resolve(r.uri) if r.uri else r.text) for r in m.frame.itertuples(index=False)}
    return [where.get(i, "") for i in ids]


@click.command("search")
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option("--text", "texts", multiple=True, help="Query text (repeatable).")
@click.option("--file", "files", multiple=True, type=click.Path(dir_okay=False), help="Query file: image, audio or video (repeatable).")
@click.option("--like", "likes", multiple=True, metavar="ID",
              help="Query by a gallery item: its id, or MODALITY:ID (repeatable); the item is left out of its hits.")
@click.option("--vector", type=click.Path(dir_okay=False, exists=True),
              help="Query by vectors in the joint space: a .npy of one (d,) or several (Q, d) rows, or the emb rows of an 'mmx embed -o' file.")
@click.option("--target", default="", show_default="every modality",
              help="Gallery modalities (or fused names such as audio+video), e.g. image,video.")
@click.option("--top", "k", default=10, type=click.IntRange(min=1), help="Hits per query (eval's --k are recall cut-offs).")
@click.option("--split", default="test", help="Which of RUN's embedded splits is the gallery.")
@click.option("--gallery", type=click.Path(dir_okay=False, exists=True), help="A gallery written by 'mmx embed --manifest ... -o' instead.")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Manifest whose uri column gives each gallery item's location.")
@index_option()
@json_option("each hit (one JSON object a line)")
@device_option("Where the queries are embedded and ranked: auto (CUDA when present), cpu, cuda or cuda:N.")
@click.pass_context
def search_cmd(ctx, run, texts, files, likes, vector, target, k, split, gallery, manifest, index_mode, device):
    """Rank RUN's gallery for each query (--text / --file / --like / --vector): rank, score, id, modality, label, location.

    \b
    --like and --vector need no backbone: they work for every run, also one trained on
    features imported with 'mmx cache import'.
    Examples:
      mmx search runs/RUN --text "a spoken seven" --target image,video --top 5
      mmx search runs/RUN --file seven.wav --target image --manifest data/mine/manifest.fetched.csv
      mmx search runs/RUN --text seven --gallery gallery.npz
      mmx search runs/RUN --like wav-7-lucas-0 --target image
      mmx search runs/RUN --vector seven.npz --target image --top 3
    """
    from mmx.pipeline.embed import open_space
    from mmx.pipeline.ranking import rank

    if not (texts or files or likes or vector):
        raise click.UsageError("nothing to search for: give --text, --file, --like or --vector")
    if texts or files:
        _queries(files, texts)  # a missing file or an over-long text is refused before the gallery loads
    targets = [t.strip() for t in target.split(",") if t.strip()] or None
    g = _gallery(run, split, targets, gallery)
    con = console(ctx)
    as_json = con.json
    space = open_space(run, device, con.warn)
    if g["emb"].shape[1] != space.cfg.embed_dim:
        raise ValueError(f"{gallery or run}: gallery rows have {g['emb'].shape[1]} dimensions, {run}'s space "
                         f"{space.cfg.embed_dim}; use a gallery embedded by this run ('mmx embed {run} --manifest ... -o')")
    q, own = _search_queries(space, run, split, gallery, g, texts, files, likes, vector)
    scores, rows = rank(run, q["emb"], g["emb"], k, index_mode, None if device == "auto" else device, con.line,
                        own=own, unit_norm=True)  # _gallery scaled it
    where = _locations(manifest, g["id"][rows.ravel()]) if manifest else list(g["uri"][rows.ravel()])
    for qi in range(len(q["id"])):
        if not as_json:
            click.echo(f"query {q['id'][qi]} ({q['modality'][qi]}: {q['uri'][qi]})")
        for r in range(rows.shape[1]):
            row = rows[qi, r]
            hit = {"query": q["id"][qi], "rank": r + 1, "score": round(float(scores[qi, r]), 4), "id": g["id"][row],
                   "modality": g["modality"][row], "label": g["label"][row], "location": where[qi * rows.shape[1] + r]}
            click.echo(json.dumps(hit) if as_json else
                       f"  {hit['rank']:3d}  {hit['score']:.4f}  {hit['id']}  {hit['modality']}  {hit['label'] or '-'}  {hit['location'] or '-'}")


def _search_queries(space, run, split, gallery, g, texts, files, likes, vector) -> tuple[dict, list]:
    """The queries of ``mmx search`` in the order files, texts, --like items, --vector rows, as
    :func:`embed_all` gives them, and per query the row of ``g`` it came from (None: not a gallery item)."""
    import numpy as np

    from mmx.pipeline.queries import like, read_vectors

    parts, own = [], []
    if texts or files:
        parts.append(embed_all(space, _queries(files, texts)))
        own += [None] * len(parts[-1]["id"])
    if likes:
        whole = _gallery(run, split, None, gallery)  # --like looks in the whole gallery, whatever --target keeps
        rows = like(whole, list(likes))
        parts.append({"emb": whole["emb"][rows].astype(np.float32), "id": whole["id"][rows],
                      "modality": whole["modality"][rows], "label": whole["label"][rows],
                      "uri": np.array([f"like {w}" for w in likes], dtype=str)})
        for r in rows:
            hit = np.flatnonzero((g["id"] == whole["id"][r]) & (g["modality"] == whole["modality"][r]))
            own.append(int(hit[0]) if len(hit) else None)
    if vector:
        v = read_vectors(vector, space.cfg.embed_dim)
        parts.append({"emb": v, "id": np.array([f"vector-{i + 1}" for i in range(len(v))], dtype=str),
                      "modality": np.array(["vector"] * len(v), dtype=str), "label": np.array([""] * len(v), dtype=str),
                      "uri": np.array([f"{vector}[{i}]" for i in range(len(v))], dtype=str)})
        own += [None] * len(v)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}, own


COMMANDS = [embed_cmd, search_cmd]
