"""AppTest page tests for the app shell and the dataset explorer."""

import re
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from rhf_core.data import open_dataset
from rhf_core.explore import ExplorerFilter, apply_filter
from tests.builders import build_rapidata, build_richhf

APP = str(Path(__file__).resolve().parents[1] / "app.py")
SMALL = "shapes:n=300,seed=1"


def open_app(spec: str | None = SMALL, page: str | None = "app_pages/explorer.py", **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if spec is not None:
        at.query_params["ds"] = spec
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def match_count(at: AppTest) -> tuple[int, int]:
    for md in at.markdown:
        m = re.match(r"\*\*([\d,]+)\*\* of ([\d,]+) records match", md.value)
        if m:
            return int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))
    raise AssertionError("no match count on the page")


def overlays(at: AppTest) -> list:
    """The record view's captioned images (the overlays), not the colour bars under them."""
    return [img for img in at.image if any(img.captions)]


def colour_bars(at: AppTest) -> list:
    return [img for img in at.image if not any(img.captions)]


def test_home_page_on_the_default_dataset():
    at = open_app(spec=None, page=None)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Dataset"] == "ShapesWorld"
    assert metrics["Records"] == f"{len(open_dataset('shapes')):,}"
    assert metrics["Device"] in ("CPU", "CUDA")
    assert metrics["Predictor (RAHF)"] == "rahf-shapes"
    assert metrics["Generator"] == "t2i-shapes"


def test_explorer_loads_on_the_default_dataset():
    at = open_app(spec=None)
    n, total = match_count(at)
    assert n == total == len(open_dataset("shapes"))
    assert len(at.image) >= 12  # a page of thumbnails


def test_filters_change_the_count_to_what_the_frame_says():
    at = open_app()
    frame = open_dataset(SMALL).frame
    assert match_count(at) == (300, 300)
    at.text_input(key="q").input("red").run()
    expected = len(apply_filter(frame, ExplorerFilter(text="red")))
    assert match_count(at) == (expected, 300) and 0 < expected < 300
    at.slider(key="s_plausibility").set_range(0.0, 0.5).run()
    expected = len(apply_filter(frame, ExplorerFilter(text="red", score_ranges={"plausibility": (0.0, 0.5)})))
    assert match_count(at)[0] == expected < len(apply_filter(frame, ExplorerFilter(text="red")))
    at.text_input(key="q").input("").run()
    at.slider(key="s_plausibility").set_range(0.0, 1.0).run()
    at.segmented_control(key="h_misalignment").set_value("yes").run()
    expected = int(frame["has_misalignment"].sum())
    at.multiselect(key="c_category").select("count").run()
    expected = len(apply_filter(frame, ExplorerFilter(heatmaps={"misalignment": "yes"}, categories={"category": ("count",)})))
    assert match_count(at) == (expected, 300)
    assert not at.exception


def test_sorting_orders_the_gallery():
    at = open_app(sort="plausibility")
    captions = [c.value for c in at.caption if "Pl " in c.value]
    values = [float(re.search(r"Pl (\d\.\d\d)", c).group(1)) for c in captions]
    assert len(values) >= 12 and values == sorted(values)


def test_open_a_record_renders_overlays_and_steps_through():
    at = open_app(q="circle")
    open_buttons = [b for b in at.button if b.key and b.key.startswith("open_")]
    first_id = open_buttons[0].key.removeprefix("open_").split("_", 1)[1]  # key: open_<position>_<id>
    open_buttons[0].click().run()
    assert not at.exception
    assert at.session_state["view"] == "Record" and at.session_state["rec_id"] == first_id
    captions = [c for img in overlays(at) for c in img.captions]
    assert len(overlays(at)) == 3  # the main overlay and the two side-by-side heatmaps
    assert len(colour_bars(at)) == 1 + sum("not collected" not in c for c in captions[1:])  # one per shown map
    assert captions[0] == f"{at.segmented_control(key='overlay').value} overlay"
    assert set(captions[1:]) <= {"implausibility", "misalignment", "implausibility: not collected", "misalignment: not collected"}
    assert any("Record **1**" in md.value for md in at.markdown)
    at.button[[b.label for b in at.button].index("Next ▶")].click().run()
    assert at.session_state["rec_id"] != first_id and any("Record **2**" in md.value for md in at.markdown)
    at.segmented_control(key="overlay").set_value("misalignment").run()
    at.slider(key="opacity").set_value(0.9).run()
    assert not at.exception and at.image[0].captions == ["misalignment overlay"]


def test_deep_link_opens_the_record():
    ds = open_dataset(SMALL)
    rec_id = ds[42].id
    at = open_app(view="Record", id=rec_id)
    assert at.text_input(key="rec_id").value == rec_id
    html = " ".join(md.value for md in at.markdown)
    assert all(tok in html for tok, _ in ds[42].words)
    assert len(overlays(at)) == 3


def test_overlay_opacity_and_colour_map_come_from_the_url():
    ds = open_dataset(SMALL)
    at = open_app(view="Record", id=ds[7].id, overlay="misalignment", opacity="0.3", cmap="viridis")
    assert at.segmented_control(key="overlay").value == "misalignment"
    assert at.slider(key="opacity").value == 0.3 and at.selectbox(key="cmap").value == "viridis"
    assert overlays(at)[0].captions == ["misalignment overlay"]


def test_plots_view_renders_every_chart():
    at = open_app(view="Plots")
    assert not at.exception
    charts = at.get("plotly_chart")
    assert len(charts) >= 4 + 2 + 1  # four histograms, correlations, words, scatter
    assert any("Mean implausibility heatmap" in md.value for md in at.markdown)


def test_export_view_writes_a_readable_folder(tmp_path):
    at = open_app(q="triangle", view="Export")
    at.text_input(key="export_path").input(str(tmp_path / "out")).run()
    at.button[[b.label for b in at.button].index("Export to folder")].click().run()
    assert not at.exception and at.success
    back = open_dataset(f"folder:{tmp_path / 'out'}")
    assert len(back) == match_count(at)[0] and all("triangle" in p for p in back.frame["prompt"])


def test_bad_spec_shows_an_error_and_the_app_keeps_working(tmp_path):
    at = open_app()
    at.text_input(key="ds").input(f"folder:{tmp_path / 'missing'}").run()
    assert not at.exception
    assert at.error and "Could not open dataset" in at.error[0].value and "not a directory" in at.error[0].value
    at.text_input(key="ds").input("imagenet:/x").run()
    assert "unknown dataset spec" in at.error[0].value
    at.text_input(key="ds").input(SMALL).run()
    assert not at.error and match_count(at) == (300, 300)


def test_explorer_on_richhf_files(tmp_path):
    tf, pick = build_richhf(tmp_path)
    at = open_app(spec=f"richhf18k:{tf}", pickapic=str(pick))
    assert match_count(at) == (5, 5)
    at.multiselect(key="split").select("train").run()
    assert match_count(at) == (3, 5)
    at.query_params["id"] = "train/zzz"
    at.segmented_control(key="view").set_value("Record").run()
    at.text_input(key="rec_id").input("train/zzz").run()  # labels-only record: no image, no prompt
    assert not at.exception and len(overlays(at)) == 3


def test_explorer_on_rapidata_files(tmp_path):
    at = open_app(spec=f"rapidata:{build_rapidata(tmp_path)}")
    assert match_count(at) == (3, 3)
    assert any("skipped" in e.label for e in at.expander)
    at.segmented_control(key="h_misalignment").set_value("yes").run()
    assert match_count(at) == (1, 3)
    at.segmented_control(key="view").set_value("Plots").run()
    assert not at.exception


@pytest.mark.parametrize("view", ["Gallery", "Map", "Record", "Plots", "Export"])
def test_every_view_survives_an_empty_filter(view):
    at = open_app(q="no prompt contains this", view=view)
    assert match_count(at)[0] == 0
    assert at.info or at.caption  # a message, not an exception
    assert not at.exception
    np.testing.assert_equal(len(at.error), 0)


def test_export_progress_text_is_cleared_when_done(tmp_path):
    """The bar stayed on "Exporting 49 / 49" after the export had finished."""
    at = open_app(q="triangle", view="Export")
    at.text_input(key="export_path").input(str(tmp_path / "out")).run()
    at.button[[b.label for b in at.button].index("Export to folder")].click().run()
    assert not at.exception and at.success
    assert not at.get("progress"), [p.proto.text for p in at.get("progress")]


def test_export_refuses_a_non_empty_folder_unless_overwrite_is_ticked(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    at = open_app(q="triangle", view="Export")
    at.text_input(key="export_path").input(str(target)).run()
    at.button[[b.label for b in at.button].index("Export to folder")].click().run()
    assert not at.exception and at.error and "not empty" in at.error[0].value and "Overwrite" in at.error[0].value
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]  # nothing written
    at.checkbox(key="export_overwrite").check().run()
    at.button[[b.label for b in at.button].index("Export to folder")].click().run()
    assert not at.exception and at.success and not at.error
    assert (target / "notes.txt").read_text() == "mine"  # only the export's own files are written
    assert len(open_dataset(f"folder:{target}")) == match_count(at)[0]


def test_export_to_a_file_path_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("x")
    at = open_app(q="triangle", view="Export")
    at.text_input(key="export_path").input(str(tmp_path / "a-file")).run()
    at.button[[b.label for b in at.button].index("Export to folder")].click().run()
    assert not at.exception and at.error and "is a file" in at.error[0].value


def test_an_empty_has_heatmap_parameter_means_any():
    """`?h_misalignment=` (or a run where the control came back unset) read as "no": 0 records matched."""
    at = open_app(h_misalignment="", fw="")
    assert match_count(at) == (300, 300)
    at.run()
    assert at.segmented_control(key="h_misalignment").value == "any"  # and from the next run on, drawn as "any"
    assert match_count(at) == (300, 300)
    at.segmented_control(key="h_misalignment").set_value("no").run()
    assert match_count(at) == (0, 300)  # every record of this world has both heatmaps
    at.segmented_control(key="h_misalignment").set_value("any").run()
    at.segmented_control(key="fw").set_value("no").run()
    expected = len(apply_filter(open_dataset(SMALL).frame, ExplorerFilter(flagged="no")))
    assert match_count(at) == (expected, 300) and 0 < expected < 300


def test_skipped_rows_are_counted_and_listed_with_where_and_why(tmp_path):
    at = open_app(spec=f"rapidata:{build_rapidata(tmp_path)}")
    ds = open_dataset(f"rapidata:{build_rapidata(tmp_path / 'again')}")
    assert ds.n_skipped > 0
    assert any(f"{ds.n_skipped:,} source rows skipped" in md.value for md in at.markdown)
    table = at.dataframe[0].value
    assert list(table.columns) == ["where", "why"] and len(table) == ds.n_skipped
    assert sorted(table["why"]) == sorted(s.reason for s in ds.skipped)


def test_a_folder_that_changes_on_disk_is_reopened_not_served_stale(tmp_path):
    # An annotation saved by another session or process appends to labels.jsonl; the cached dataset
    # must follow it (the cache is keyed by the labels file's mtime and size).
    import json as _json
    import os

    from PIL import Image

    from ui.loaders import load_dataset

    (tmp_path / "images").mkdir()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(tmp_path / "images" / "a.png")
    line = {"id": "a", "prompt": "a blue square", "image": "images/a.png"}
    labels = tmp_path / "labels.jsonl"
    labels.write_text(_json.dumps(line) + "\n")
    spec = f"folder:{tmp_path}"
    assert len(load_dataset(spec)) == 1
    assert load_dataset(spec) is load_dataset(spec)  # unchanged: served from the cache
    labels.write_text(_json.dumps(line) + "\n" + _json.dumps(line | {"id": "b"}) + "\n")
    st_ = labels.stat()
    os.utime(labels, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000))  # coarse clocks: force a new mtime
    assert len(load_dataset(spec)) == 2


@pytest.fixture
def own_tags(tmp_path, monkeypatch):
    """A cache of this test's own: the tag store lives in the cache folder, which the other tests share."""
    monkeypatch.setenv("RHF_CACHE_DIR", str(tmp_path / "cache"))


def click(at: AppTest, key: str) -> AppTest:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


def tick_and_tag(at: AppTest, ids: list[str], tag: str) -> None:
    for rec_id in ids:
        at.checkbox(key=f"sel_{rec_id}").check().run()
    at.text_input(key="tag_text_gallery").input(tag).run()
    click(at, "tag_add_gallery")


def test_tag_two_records_filter_by_tag_and_the_tags_survive_a_reload(own_tags):
    ds = open_dataset(SMALL)
    ids = [ds[3].id, ds[5].id]
    at = open_app()
    tick_and_tag(at, ids, "  Odd Shapes ")
    assert any("2 records tagged `odd shapes`" in s.value for s in at.success)
    at.multiselect(key="tag_filter").select("odd shapes").run()
    assert match_count(at) == (2, 300)
    shown = sorted(b.key.split("_", 2)[2] for b in at.button if b.key and b.key.startswith("open_"))
    assert shown == sorted(ids)
    # A new session (a reload) reads the tags back from disk.
    again = open_app(tag_filter="odd shapes")
    assert match_count(again) == (2, 300)
    assert any("`odd shapes`" in c.value for c in again.caption)  # thumbnails show their tags
    # Untag one from the record view: the filter follows.
    again.segmented_control(key="view").set_value("Record").run()
    again.text_input(key="rec_id").input(ids[0]).run()
    assert any(md.value == "**Tags:** `odd shapes`" for md in again.markdown)
    again.text_input(key="tag_text_record").input("odd shapes").run()
    click(again, "tag_remove_record")
    assert match_count(again) == (1, 300) and any(md.value == "**Tags:** none" for md in again.markdown)


def test_a_bad_tag_is_refused_with_what_is_allowed(own_tags):
    ds = open_dataset(SMALL)
    at = open_app()
    tick_and_tag(at, [ds[0].id], "a, b")
    assert at.error and "letters, digits" in at.error[0].value
    assert not at.multiselect(key="tag_filter").options


def test_save_a_view_change_the_filters_and_reopen_it(own_tags):
    at = open_app()
    at.text_input(key="q").input("red").run()
    at.slider(key="s_plausibility").set_range(0.0, 0.5).run()
    at.selectbox(key="sort").set_value("plausibility").run()
    saved = match_count(at)
    at.text_input(key="view_name").input("red, implausible").run()
    click(at, "view_save")
    assert any("Saved view `red, implausible`" in s.value for s in at.success)
    at.text_input(key="q").input("blue").run()
    at.slider(key="s_plausibility").set_range(0.0, 1.0).run()
    at.selectbox(key="sort").set_value("").run()
    assert match_count(at) != saved
    at.selectbox(key="view_pick").set_value("red, implausible").run()
    click(at, "view_open")
    assert at.text_input(key="q").value == "red" and at.slider(key="s_plausibility").value == (0.0, 0.5)
    assert at.selectbox(key="sort").value == "plausibility" and match_count(at) == saved
    # A new session lists the saved view too, and can delete it.
    again = open_app()
    assert again.selectbox(key="view_pick").options == ["red, implausible"]
    click(again, "view_delete")
    assert not [s for s in again.selectbox if s.key == "view_pick"]


def test_compare_shows_two_records_on_one_scale(own_tags):
    ds = open_dataset(SMALL)
    a, b = ds[0], ds[1]
    at = open_app()
    tick_and_tag(at, [a.id, b.id], "pair")  # ticks, then the Compare button
    at.button[[x.label for x in at.button].index("Compare ticked")].click().run()
    assert not at.exception and at.session_state["view"] == "Compare"
    shown = [img for img in overlays(at) if not img.captions[0].startswith("One scale")]
    assert [img.captions[0].split(" · ")[0] for img in shown] == sorted([a.id, b.id])
    heat = at.segmented_control(key="cmp_heat").value
    vmax = max(float(r.heatmaps[heat].max()) for r in (a, b))
    bar = [img for img in at.image if any("One scale" in c for c in img.captions)]
    assert len(bar) == 1 and f"0 → {vmax:.3g}" in bar[0].captions[0]


def test_ticks_survive_paging(own_tags):
    ds = open_dataset(SMALL)
    at = open_app()
    at.checkbox(key=f"sel_{ds[0].id}").check().run()
    at.session_state["page"] = 2
    at.run()
    at.checkbox(key=f"sel_{ds[30].id}").check().run()
    assert any(c.value == f"`{ds[0].id}`, `{ds[30].id}`" for c in at.caption)
    # Unticked boxes of pages no longer shown leave no state behind; the ticked ones stay.
    at.session_state["page"] = 3
    at.run()
    kept = sorted(k for k in at.session_state if k.startswith("sel_"))
    on_page = {f"sel_{ds[i].id}" for i in range(48, 72)}
    assert set(kept) - on_page == {f"sel_{ds[0].id}", f"sel_{ds[30].id}"}
    assert any(c.value == f"`{ds[0].id}`, `{ds[30].id}`" for c in at.caption)
    at.button[[x.label for x in at.button].index("Clear ticks")].click().run()
    assert any(c.value.startswith("Tick records below") for c in at.caption)


def test_compare_settings_come_from_the_url():
    ds = open_dataset(SMALL)
    at = open_app(view="Compare", cmp=f"{ds[0].id},{ds[1].id},{ds[2].id}", cmp_heat="misalignment", cmp_cmap="jet")
    assert at.segmented_control(key="cmp_heat").value == "misalignment" and at.selectbox(key="cmp_cmap").value == "jet"
    assert len([img for img in overlays(at) if not img.captions[0].startswith("One scale")]) == 3


def test_compare_refuses_one_record_and_an_unknown_id():
    ds = open_dataset(SMALL)
    at = open_app(view="Compare", cmp=ds[0].id)
    assert at.info and "2 to 4" in at.info[0].value
    at.text_input(key="cmp").input(f"{ds[0].id}, no-such-id").run()
    assert not at.exception and at.error and "no-such-id" in at.error[0].value


def test_patches_grid_is_sorted_by_heat_then_by_size():
    at = open_app(view="Patches")
    heats = [float(m.group(1)) for c in at.caption if (m := re.match(r"heat (\d\.\d\d) · ([\d.]+)%", c.value))]
    assert 10 <= len(heats) <= 48 and heats == sorted(heats, reverse=True)
    at.segmented_control(key="patch_sort").set_value("size").run()
    sizes = [float(m.group(2)) for c in at.caption if (m := re.match(r"heat (\d\.\d\d) · ([\d.]+)%", c.value))]
    assert len(sizes) == len(heats) and sizes == sorted(sizes, reverse=True) and sizes != heats
    at.slider(key="patch_threshold").set_value(0.95).run()
    assert not at.exception


def test_export_carries_the_tags(tmp_path, own_tags):
    ds = open_dataset(SMALL)
    at = open_app(q="triangle")
    first = next(b.key.split("_", 2)[2] for b in at.button if b.key and b.key.startswith("open_"))
    tick_and_tag(at, [first], "keep")
    at.segmented_control(key="view").set_value("Export").run()
    at.text_input(key="export_path").input(str(tmp_path / "out")).run()
    at.button[[b.label for b in at.button].index("Export to folder")].click().run()
    assert not at.exception and at.success
    back = open_dataset(f"folder:{tmp_path / 'out'}")
    assert back.get(first).meta["tags"] == ["keep"] and set(back.frame["tags"]) == {"keep", ""}
    assert "tags" not in ds.get(first).meta  # the source's record is unchanged
    # Opening the exported folder starts its tag store from those tags.
    again = open_app(spec=f"folder:{tmp_path / 'out'}", tag_filter="keep")
    assert match_count(again) == (1, len(back))


# --- embeddings: map and "more like this" ------------------------------------------------------

def n_points(xs) -> int:
    """Points in a plotly trace's x: a list, or (plotly ≥ 6) a base64 typed array {"dtype", "bdata"}."""
    if isinstance(xs, dict):
        import base64

        return len(base64.b64decode(xs["bdata"])) // np.dtype(xs["dtype"]).itemsize
    return len(xs)


def similar_positions(at: AppTest) -> list[int]:
    return [int(b.key.removeprefix("similar_open_")) for b in at.button if b.key and b.key.startswith("similar_open_")]


def test_more_like_this_shows_the_nearest_records_which_share_the_prompts_shape():
    from rhf_core.embeddings import image_embeddings, more_like
    from rhf_core.reward.encoders import load_encoders
    from rhf_core.shapes.grammar import parse_prompt

    ds = open_dataset(SMALL)
    emb = image_embeddings(ds, load_encoders(device="cpu"))
    specs = [parse_prompt(p) for p in ds.frame["prompt"]]
    at = open_app(view="Record", id=ds[0].id)
    at.toggle(key="similar").set_value(True).run()
    assert not at.exception
    shown = similar_positions(at)
    assert shown == more_like(emb, 0, 8)[0].tolist() and 0 not in shown
    assert sum("sim " in c.value for c in at.caption) == 8
    # The toggle stays on while stepping through records: each record's first neighbour on the page.
    same = []
    for pos in range(40):
        at.text_input(key="rec_id").input(ds[pos].id).run()
        first = similar_positions(at)[0]
        same.append(specs[first].shape == specs[pos].shape)
    shapes = np.array([s.shape for s in specs])
    counts = np.unique(shapes, return_counts=True)[1]
    chance = float((counts * (counts - 1)).sum() / (len(shapes) * (len(shapes) - 1)))
    assert np.mean(same) > 1.3 * chance, (np.mean(same), chance)
    at.button(key=f"similar_open_{first}").click().run()  # Open on a neighbour opens it
    assert at.session_state["rec_id"] == ds[first].id


def test_map_greys_out_what_the_filters_drop_and_its_selection_filters_the_gallery():
    ds = open_dataset(SMALL)
    at = open_app(view="Map", q="red", map_colour="plausibility")
    assert not at.exception
    n_red = match_count(at)[0]
    chart = at.get("plotly_chart")[0]
    import json

    traces = json.loads(chart.proto.spec)["data"]
    sizes = {t["name"]: n_points(t["x"]) for t in traces}
    assert all(t["type"] == "scattergl" for t in traces)
    assert sizes == {"outside the filters": 300 - n_red, "matching": n_red}
    chosen = [ds[i].id for i in (1, 5, 9, 200)]
    at.session_state["map_sel"] = chosen  # what a lasso around these four points stores
    at.text_input(key="q").input("").run()
    at.segmented_control(key="view").set_value("Gallery").run()
    assert match_count(at)[0] == 4
    assert sorted(b.key.split("_", 2)[2] for b in at.button if b.key and b.key.startswith("open_")) == sorted(chosen)
    at.button(key="map_clear_top").click().run()
    assert match_count(at) == (300, 300)


def test_map_text_search_lists_thumbnails_and_can_filter_the_gallery():
    at = open_app(view="Map")
    at.text_input(key="map_text").input("a red circle").run()
    assert not at.exception
    hits = [b for b in at.button if b.key and b.key.startswith("text_open_")]
    assert len(hits) == 24
    at.button(key="text_to_filter").click().run()
    assert match_count(at)[0] == 24


def test_a_large_dataset_waits_for_the_compute_button(monkeypatch):
    import ui.explorer_parts

    monkeypatch.setattr(ui.explorer_parts, "AUTO_EMBED", 100)  # SMALL's 300 records count as large
    at = open_app(spec="shapes:n=300,seed=4", view="Map")
    assert not at.get("plotly_chart") and any("computed once and cached" in i.value for i in at.info)
    at.button(key="embed_go_button").click().run()
    assert not at.exception and len(at.get("plotly_chart")) == 1


def gallery_ids(at: AppTest) -> list[str]:
    return [b.key.removeprefix("open_").split("_", 1)[1] for b in at.button if b.key and b.key.startswith("open_")]


def test_page_buttons_behind_j_and_k_turn_the_page_within_its_bounds():
    """The j / k shortcuts press these buttons (pressing the keys is tests/test_browser_keys.py)."""
    ds = open_dataset(SMALL)
    at = open_app(sort="overall", desc="true", per_page="12")
    order = [ds[int(p)].id for p in apply_filter(ds.frame, ExplorerFilter(sort_by="overall", descending=True))]
    assert gallery_ids(at) == order[:12] and at.button(key="page_prev").disabled
    assert (at.button(key="page_next").proto.shortcut, at.button(key="page_prev").proto.shortcut) == ("j", "k")
    at.button(key="page_next").click().run()
    assert gallery_ids(at) == order[12:24] and at.session_state["page"] == 2
    at.button(key="page_prev").click().run()
    assert gallery_ids(at) == order[:12]
    at.session_state["page"] = 25
    at.run()
    assert gallery_ids(at) == order[288:300] and at.button(key="page_next").disabled
    assert any(c.value.startswith("Page 25 of 25 · keys j / k") for c in at.caption)


def test_record_arrows_follow_the_filtered_sorted_order():
    """← / → press Previous / Next: they step through the filtered, sorted set, not the dataset order."""
    ds = open_dataset(SMALL)
    f = ExplorerFilter(text="circle", sort_by="plausibility")
    order = [ds[int(p)].id for p in apply_filter(ds.frame, f)]
    at = open_app(q="circle", sort="plausibility", view="Record", id=order[1])
    assert (at.button(key="rec_prev").proto.shortcut, at.button(key="rec_next").proto.shortcut) == ("left", "right")
    at.button(key="rec_next").click().run()
    assert at.session_state["rec_id"] == order[2]
    at.button(key="rec_prev").click().run()
    at.button(key="rec_prev").click().run()
    assert at.session_state["rec_id"] == order[0] and at.button(key="rec_prev").disabled
