"""Shared-server mode: the path policy (unit), and the app refusing what it refuses (AppTest)."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from rhf_core.data import export, open_dataset
from rhf_core.errors import DatasetSpecError, RHFError, SharedModeError
from rhf_core.shared import HIDDEN, LIMITS, Policy

# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """data/ (a dataset in data/ds, a link inside pointing out), models/, exports/ and outside/."""
    data, models, exports, outside = (tmp_path / n for n in ("data", "models", "exports", "outside"))
    for d in (data, models, exports, outside):
        d.mkdir()
    export(open_dataset("shapes:n=3,seed=0"), data / "ds")
    export(open_dataset("shapes:n=2,seed=1"), outside / "secret")
    (data / "escape").symlink_to(outside)  # a link inside the root that leads out of it
    (data / "inner").symlink_to(data / "ds")  # a link that stays inside
    (models / "rahf").mkdir()
    return tmp_path


def policy(tree, **kw) -> Policy:
    env = {"RHF_SHARED": "1", "RHF_DATA_ROOTS": str(tree / "data"), "RHF_MODEL_ROOTS": str(tree / "models"),
           "RHF_EXPORT_ROOT": str(tree / "exports")} | kw
    return Policy.from_env(env)


def refused(fn, *args) -> str:
    with pytest.raises(SharedModeError) as info:
        fn(*args)
    return str(info.value)


# --- configuration ------------------------------------------------------------------------------


def test_shared_mode_is_off_unless_the_variable_says_so(tree):
    assert not Policy.from_env({}).shared
    assert not Policy.from_env({"RHF_SHARED": "0"}).shared
    assert not Policy.from_env({"RHF_SHARED": ""}).shared
    for on in ("1", "true", "YES", " on "):
        assert Policy.from_env({"RHF_SHARED": on}).shared


def test_roots_split_on_pathsep_and_resolve(tree):
    p = Policy.from_env({"RHF_SHARED": "1", "RHF_DATA_ROOTS": f"{tree / 'data'}{os.pathsep}{tree / 'outside' / '..' / 'models'}{os.pathsep}"})
    assert p.data_roots == (tree.resolve() / "data", tree.resolve() / "models")


def test_local_mode_passes_everything_through(tree):
    p = Policy.from_env({})
    spec = f"folder:{tree / 'outside' / 'secret'}"
    assert p.check_spec(spec, "/anything") == (spec, "/anything")
    assert p.model_path("/etc") == "/etc" and p.model_path("org/model") == "org/model"
    assert p.limit("candidates", 16) == 16 and p.check_limit("shapes_n", 10**8) == 10**8
    assert p.scrub(f"bad {tree}/x") == f"bad {tree}/x"


# --- the path check -----------------------------------------------------------------------------


def test_inside_the_root_is_accepted_and_resolved(tree):
    p = policy(tree)
    real = (tree / "data" / "ds").resolve()
    assert p.data_path(str(tree / "data" / "ds")) == real
    assert p.data_path("ds") == real  # relative: read inside the roots, not the working directory
    assert p.data_path("./ds/../ds") == real
    assert p.data_path("inner") == real  # a symlink that stays inside is fine (and resolved)
    assert p.check_spec(f"folder:{tree / 'data' / 'ds'}") == (f"folder:{real}", None)
    assert len(open_dataset(p.check_spec("folder:ds")[0])) == 3


@pytest.mark.parametrize("value", [
    "{tree}/outside/secret",  # plainly outside
    "{tree}/data/../outside/secret",  # `..` out of the root
    "../outside/secret",  # relative, climbing out
    "escape/secret",  # a symlink inside the root that leads out
    "{tree}/data/escape",
    "/",
    "/etc/passwd",
    "{tree}/database",  # a sibling whose name merely starts with the root's
])
def test_outside_the_root_is_refused_without_naming_the_path(tree, value):
    (tree / "database").mkdir()
    value = value.format(tree=tree)
    message = refused(policy(tree).data_path, value)
    assert message == "this path is outside the allowed data folders"
    message = refused(policy(tree).check_spec, f"folder:{value}")
    assert str(tree) not in message and value not in message


def test_empty_and_nul_paths_are_refused(tree):
    p = policy(tree)
    assert "no path given" in refused(p.data_path, "")
    assert "no path given" in refused(p.data_path, "   ")
    assert "NUL" in refused(p.data_path, "ds\x00x")
    assert "no path given" in refused(p.check_spec, "folder:")


def test_no_roots_configured_refuses_every_path(tree):
    p = Policy.from_env({"RHF_SHARED": "1"})
    assert "allows no data folders" in refused(p.data_path, str(tree / "data" / "ds"))
    assert "no export folder" in refused(p.export_path, "x")
    assert p.check_spec("shapes:n=10") == ("shapes:n=10", None)  # the embedded data needs no root


def test_specs_in_shared_mode(tree):
    p = policy(tree)
    assert "name a dataset as" in refused(p.check_spec, str(tree / "data" / "ds"))  # bare paths: no walking
    assert "does not download" in refused(p.check_spec, "rapidata:Rapidata/text-2-image-Rich-Human-Feedback")
    assert "no such file or folder" in refused(p.check_spec, "folder:missing")
    assert "at most 20,000" in refused(p.check_spec, "shapes:n=100000000")
    with pytest.raises(DatasetSpecError):
        p.check_spec("shapes:cache=0")
    tf = tree / "data" / "tf"
    tf.mkdir()
    spec, pick = p.check_spec("richhf18k:tf", "ds")
    assert spec == f"richhf18k:{tf.resolve()}" and pick == str((tree / "data" / "ds").resolve())
    assert "outside" in refused(p.check_spec, "richhf18k:tf", str(tree / "outside"))
    assert "outside" in refused(p.check_spec, "richhf:tf", "/")  # the Pick-a-Pic field walks its folder
    # Options in the spec (issue 18): every path among them is checked, the split kept.
    spec, pick = p.check_spec("richhf18k:tf,pickapic=ds,split=test")
    assert spec == f"richhf18k:{tf.resolve()},pickapic={(tree / 'data' / 'ds').resolve()},split=test" and pick is None
    assert "outside" in refused(p.check_spec, f"richhf18k:tf,pickapic={tree / 'outside'}")
    assert "no such Pick-a-Pic folder" in refused(p.check_spec, "richhf18k:tf,pickapic=nope")
    assert p.check_spec("folder:ds,split=dev")[0] == f"folder:{(tree / 'data' / 'ds').resolve()},split=dev"
    assert p.check_spec("shapes:n=10,split=dev") == ("shapes:n=10,split=dev", None)
    with pytest.raises(DatasetSpecError, match="cache option"):
        p.check_spec("folder:ds,cache=false")


def test_model_paths(tree):
    p = policy(tree)
    assert p.model_path("") == ""  # the embedded checkpoint
    assert p.model_path("rahf") == str((tree / "models" / "rahf").resolve())
    assert "outside the allowed model folders" in refused(p.model_path, str(tree / "data" / "ds"))
    assert "does not download" in refused(p.model_path, "runwayml/stable-diffusion-v1-5")
    assert "no model at this path" in refused(p.model_path, "missing-folder")


def test_export_only_into_a_new_folder_under_the_export_root(tree):
    p = policy(tree)
    assert p.export_path("mine") == (tree / "exports" / "mine").resolve()
    assert "outside the server's export folder" in refused(p.export_path, str(tree / "outside" / "x"))
    assert "outside" in refused(p.export_path, "../outside/x")
    assert "not the export folder itself" in refused(p.export_path, ".")
    (tree / "exports" / "taken").mkdir()
    (tree / "exports" / "taken" / "labels.jsonl").write_text("")
    assert "already exists" in refused(p.export_path, "taken")
    (tree / "exports" / "empty").mkdir()
    assert p.export_path("empty") == (tree / "exports" / "empty").resolve()


def test_caps():
    p = Policy(shared=True)
    assert p.limit("candidates", 16) == LIMITS["candidates"] and p.limit("candidates", 2) == 2
    assert p.check_limit("batch_size", 8) == 8
    with pytest.raises(SharedModeError, match="at most"):
        p.check_limit("batch_size", LIMITS["batch_size"] + 1)


def test_scrub_hides_server_paths(tree):
    p = policy(tree)
    data = (tree / "data").resolve()
    assert p.scrub(f"folder: {data}/ds is not a directory") == "folder: ds is not a directory"
    assert p.scrub(f"[Errno 2] No such file or directory: '{tree}/outside/x.png'") == \
        f"[Errno 2] No such file or directory: '{HIDDEN}'"
    assert p.scrub("shapes: n must be positive; use org/name or 1 / 2") == "shapes: n must be positive; use org/name or 1 / 2"
    assert p.scrub_obj({"a": [f"{tree}/outside/y"], "n": 3}) == {"a": [HIDDEN], "n": 3}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(["..", ".", "ds", "escape", "inner", "x", "", "~", "data", "outside"]),
                      max_size=6), absolute=st.booleans())
def test_property_an_accepted_path_is_always_inside_a_root(tree, parts, absolute):
    """Whatever mix of `..`, links and names: either refused, or the real path lies inside data/."""
    p = policy(tree)
    value = os.path.join(str(tree / "data") if absolute else "", *parts) if parts else ""
    try:
        real = p.data_path(value)
    except SharedModeError as e:
        event("refused")
        assert str(tree) not in str(e)
        return
    event("accepted")
    assert Path(os.path.realpath(real)).is_relative_to((tree / "data").resolve())


def test_library_errors_reach_the_user_scrubbed(tree):
    """A reader's own message about a path inside the root comes back relative to the root."""
    p = policy(tree)
    (tree / "data" / "empty").mkdir()
    spec, _ = p.check_spec("folder:empty")
    with pytest.raises(RHFError) as info:
        open_dataset(spec)
    assert str(tree) in str(info.value)  # the library names the path ...
    assert str(tree) not in p.scrub(info.value) and "empty" in p.scrub(info.value)  # ... the page does not


# --- the app in shared mode (AppTest) -----------------------------------------------------------

from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.test_page_explorer import open_app  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def shared_env(tree, monkeypatch):
    monkeypatch.setenv("RHF_SHARED", "1")
    monkeypatch.setenv("RHF_DATA_ROOTS", str(tree / "data"))
    monkeypatch.setenv("RHF_MODEL_ROOTS", str(tree / "models"))
    monkeypatch.setenv("RHF_EXPORT_ROOT", str(tree / "exports"))
    return tree


def run_app(page: str | None = "app_pages/explorer.py", **params) -> AppTest:
    return open_app(None, page, **params)  # the spec, if any, comes in params (ds=…)


def shown_text(at: AppTest) -> str:
    """Everything a user reads on the page: errors, markdown, captions, successes."""
    parts = [e.value for e in at.error] + [m.value for m in at.markdown] + [c.value for c in at.caption]
    return "\n".join(parts + [s.value for s in at.success] + [w.value for w in at.warning])


def test_shared_app_refuses_a_dataset_outside_the_roots_without_naming_it(shared_env):
    tree = shared_env
    at = run_app(ds="shapes:n=300,seed=1")
    assert not at.error
    for spec in (f"folder:{tree / 'outside' / 'secret'}", "folder:../outside/secret", "folder:escape/secret",
                 "rapidata:/etc", f"richhf18k:{tree / 'outside'}"):
        at.text_input(key="ds").input(spec).run()  # the sidebar field, as a user types it
        assert not at.exception and at.error, spec
        message = at.error[0].value
        assert "outside the allowed data folders" in message, message
        path = spec.split(":", 1)[1]
        assert path not in message and str(tree) not in message and "/etc" not in message
        assert not [m for m in at.markdown if "records match" in m.value]  # the page stopped: nothing opened


def test_shared_app_opens_a_dataset_inside_the_roots_by_a_relative_path(shared_env):
    at = run_app(ds="folder:ds")
    assert not at.error
    assert any("**3** of 3 records match" in m.value for m in at.markdown)
    assert str(shared_env) not in shown_text(at)


def test_shared_app_caps_n_and_refuses_bare_paths_and_hub_ids(shared_env):
    at = run_app(ds="shapes:n=100000000")  # used to tie up the server
    assert at.error and "at most 20,000" in at.error[0].value
    at.text_input(key="ds").input(str(shared_env / "data" / "ds")).run()
    assert at.error and "name a dataset as" in at.error[0].value and str(shared_env) not in at.error[0].value
    at.text_input(key="ds").input("rapidata:Rapidata/text-2-image-Rich-Human-Feedback").run()
    assert at.error and "does not download" in at.error[0].value


def test_shared_app_scrubs_a_reader_error_inside_the_roots(shared_env):
    (shared_env / "data" / "empty").mkdir()
    at = run_app(ds="folder:empty")
    assert at.error and "empty" in at.error[0].value and str(shared_env) not in at.error[0].value


def test_shared_home_refuses_a_checkpoint_and_generator_outside_the_model_roots(shared_env):
    tree = shared_env
    outside = str(tree / "outside" / "secret")
    at = run_app(page=None, ds=f"folder:{outside}", rahf=str(tree / "outside"), gen="runwayml/stable-diffusion-v1-5")
    errors = [e.value for e in at.error]
    assert any("dataset" in e and "outside the allowed data folders" in e for e in errors), errors
    assert any("RAHF checkpoint" in e and "outside the allowed model folders" in e for e in errors), errors
    assert any("generator" in e and "does not download" in e for e in errors), errors
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Predictor (RAHF)"] == metrics["Dataset"] == metrics["Generator"] == "—"
    assert str(tree) not in shown_text(at)  # neither the errors nor the caption repeat the path
    assert all(str(tree) not in (m.help or "") for m in at.metric)


def click(at: AppTest, label: str) -> AppTest:
    at.button[[b.label for b in at.button].index(label)].click().run()
    assert not at.exception, at.exception
    return at


def test_shared_export_only_into_a_new_folder_under_the_export_root(shared_env):
    tree = shared_env
    at = run_app(ds="shapes:n=300,seed=1", q="triangle", view="Export")
    assert not at.checkbox  # no overwrite box on a shared server
    for outside in (str(tree / "outside" / "new"), "../outside/new", "/tmp/rhf-shared-export-probe"):
        at.text_input(key="export_path").input(outside).run()
        click(at, "Export to folder")
        assert at.error and "Export refused" in at.error[0].value and "outside" in at.error[0].value
        assert str(tree) not in at.error[0].value and outside not in at.error[0].value
    assert sorted(p.name for p in (tree / "outside").iterdir()) == ["secret"]  # nothing written
    assert not Path("/tmp/rhf-shared-export-probe").exists()
    at.text_input(key="export_path").input("mine").run()
    click(at, "Export to folder")
    assert at.success and "`mine`" in at.success[0].value and str(tree) not in at.success[0].value
    assert len(open_dataset(f"folder:{tree / 'exports' / 'mine'}")) > 0
    assert not at.get("progress")  # the bar is gone once the export is done
    click(at, "Export to folder")  # the same name again: another user's export is never replaced
    assert at.error and "already exists" in at.error[0].value


def test_shared_export_without_an_export_root_offers_only_the_download(shared_env, monkeypatch):
    monkeypatch.delenv("RHF_EXPORT_ROOT")
    at = run_app(ds="shapes:n=300,seed=1", q="triangle", view="Export")
    assert not [t for t in at.text_input if t.key == "export_path"]
    assert any("zip download" in c.value for c in at.caption)
    click(at, "Prepare a zip download")
    assert at.get("download_button")


def test_a_home_folder_of_no_such_user_is_refused_not_a_traceback(tree):
    # Path.expanduser raises RuntimeError for ~name of an unknown user; that must not reach a page.
    from rhf_core import annotation as A
    from rhf_core.errors import InvalidArgumentError

    msg = refused(policy(tree).check_spec, "folder:~no-such-user-here/x")
    assert "no such user" in msg
    with pytest.raises(InvalidArgumentError, match="no such user"):
        A.add_annotation("~no-such-user-here/labels", "r1", "a red circle", "alice")


def test_scrub_replaces_only_whole_roots(tree):
    p = policy(tree)
    data = str((tree / "data").resolve())
    assert p.scrub(f"cannot read {data}/ds/x.png") == "cannot read ds/x.png"
    assert p.scrub(f"in '{data}'") == "in '.'"
    leaked = p.scrub(f"cannot read {data}2/secret/x.png")  # a sibling folder that only starts like a root
    assert "secret" not in leaked and HIDDEN in leaked
