"""What a step depends on: helpers, globals, closures, user modules, packages, and the keys.

Each test counts real executions and reads the reasons from the log on disk. Globals live in
modules written to ``tmp_path`` and imported, as the user's own ``.py`` files would be.
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import importlib
import json
import socket
import sqlite3
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import durable_nb
from durable_nb import DurableWarning, Step, step, workflow
from durable_nb.replay import walk
from durable_nb.replay.digests import args_digest, legacy_digest, value_digest

from .conftest import log_sql, python


@pytest.fixture
def module(tmp_path: Path, log_path: Path) -> Iterator[object]:
    """``module(name, source)`` writes ``tmp_path/name.py`` and imports (or reloads) it."""
    sys.path.insert(0, str(tmp_path))
    loaded: list[str] = []

    def write(name: str, source: str) -> ModuleType:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        if name in sys.modules:
            return importlib.reload(sys.modules[name])
        loaded.append(name)
        return importlib.import_module(name)

    yield write
    sys.path.remove(str(tmp_path))
    for name in loaded:
        sys.modules.pop(name, None)


def reasons(log: Path | str, name: str) -> list[str | None]:
    rows = log_sql(log).execute("SELECT reason FROM steps WHERE name = ? ORDER BY id", (name,))
    return [r[0] for r in rows]


NOTEBOOK = """
    FACTOR = 10
    calls = []

    def double(x):
        return 2 * x

    def helper(x):
        return double(x) * FACTOR

    def s(x):
        calls.append(x)
        return helper(x)
"""


def test_globals_helpers_and_helpers_of_helpers_invalidate(module, log_path: Path) -> None:
    nb = module("nb_globals", NOTEBOOK)
    s = Step(nb.s)
    for expected, change in [
        (20, None),
        (20, None),  # unchanged: replays
        (200, lambda: setattr(nb, "FACTOR", 100)),
        (40, lambda: module("nb_globals", NOTEBOOK.replace("2 * x", "4 * x"))),
    ]:
        if change:
            change()
        with workflow("g"):
            assert s(1) == expected
    nb = sys.modules["nb_globals"]
    assert nb.calls == [1]  # the reloaded module has its own list: one call since
    assert reasons(log_path, "s") == [
        None,
        "global nb_globals.FACTOR changed (10 -> 100) since run 1",
        "code of nb_globals.double changed; global nb_globals.FACTOR changed (100 -> 10) "
        "since run 3",
    ]
    said = durable_nb.events(log=log_path)  # the events view says it too
    started = said[said["kind"] == "step started"]["detail"].tolist()
    # (events of one clock tick may come in either order: the reason is there, not its index)
    assert "(1) -- global nb_globals.FACTOR changed (10 -> 100) since run 1" in started
    assert durable_nb.steps("g", log=log_path)["reason"].tolist()[1:] == reasons(log_path, "s")[1:]


def test_a_comment_or_docstring_in_a_helper_changes_nothing(module, log_path: Path) -> None:
    nb = module("nb_cosmetic", NOTEBOOK)
    with workflow("c"):
        Step(nb.s)(2)
    edited = NOTEBOOK.replace(
        "def double(x):\n", 'def double(x):\n        """Twice x."""\n        # why: tests\n'
    )
    nb = module("nb_cosmetic", edited)
    with workflow("c") as run:
        assert Step(nb.s)(2) == 40
    assert (run.steps_replayed, run.steps_run) == (1, 0)
    assert nb.calls == []


def test_closure_variables_count_and_write_only_names_do_not(log_path: Path) -> None:
    seen: list[int] = []  # only appended to by the step: an output, not an input

    def make(k: int) -> object:
        @step(name="add")
        def add(x: int) -> int:
            seen.append(x)
            return x + k

        return add

    for k, expected in [(1, 2), (1, 2), (5, 6)]:
        with workflow("closure"):
            assert make(k)(1) == expected  # type: ignore[operator]
    assert seen == [1, 1]
    assert reasons(log_path, "add") == [None, "closure variable k changed (1 -> 5) since run 1"]


def test_methods_of_user_classes_count_through_globals_and_arguments(
    module, log_path: Path
) -> None:
    source = """
        class Scaler:
            offset = 1
            def scale(self, x):
                return x + self.offset

        model = Scaler()

        def by_global(x):
            return model.scale(x)

        def by_argument(m, x):
            return m.scale(x)
    """
    nb = module("nb_classes", source)
    steps = lambda nb: (Step(nb.by_global), Step(nb.by_argument))  # noqa: E731
    with workflow("cls"):
        g, a = steps(nb)
        assert (g(1), a(nb.Scaler(), 1)) == (2, 2)
    nb = module("nb_classes", source.replace("x + self.offset", "x + 2 * self.offset"))
    with workflow("cls") as run:
        g, a = steps(nb)
        assert (g(1), a(nb.Scaler(), 1)) == (3, 3)
    assert run.steps_run == 2
    assert reasons(log_path, "by_global")[1].startswith("code of nb_classes.Scaler.scale changed")
    assert reasons(log_path, "by_argument")[1].startswith("code of nb_classes.Scaler.scale changed")
    nb = module("nb_classes", source.replace("offset = 1", "offset = 3"))
    with workflow("cls") as run:
        g, _ = steps(nb)
        assert g(1) == 4
    assert "global nb_classes.Scaler.offset changed (1 -> 3)" in reasons(log_path, "by_global")[2]


def test_a_user_module_reached_as_an_attribute_is_followed(module, log_path: Path) -> None:
    module("user_helpers", "def triple(x):\n    return 3 * x\n")
    nb = module("nb_attr", "import user_helpers\ndef s(x):\n    return user_helpers.triple(x)\n")
    with workflow("attr"):
        assert Step(nb.s)(2) == 6
    with workflow("attr") as run:
        assert Step(nb.s)(2) == 6
    assert run.steps_replayed == 1
    module("user_helpers", "def triple(x):\n    return 30 * x\n")  # edited and reloaded
    with workflow("attr") as run:
        assert Step(nb.s)(2) == 60
    assert reasons(log_path, "s")[1] == "code of user_helpers.triple changed since run 1"


def test_nested_steps_are_part_of_their_parent(module, log_path: Path) -> None:
    source = """
        from durable_nb import step
        @step
        def inner(x):
            return x + 1
        @step
        def outer(x):
            return inner(x) * 10
    """
    nb = module("nb_nested", source)
    with workflow("nested"):
        assert nb.outer(1) == 20
    nb = module("nb_nested", source.replace("x + 1", "x + 2"))
    with workflow("nested") as run:
        assert nb.outer(1) == 30  # the parent's stored 20 was made by the old inner
    assert run.steps_run == 2
    assert reasons(log_path, "outer")[1] == "code of nb_nested.inner changed since run 1"


def test_installed_packages_are_recorded_not_hashed(log_path: Path) -> None:
    @step
    def stats(i: int) -> float:
        return float(np.mean(np.arange(i)))

    with workflow("np"):
        stats(10)
    env = sqlite3.connect(log_path).execute("SELECT environment FROM runs").fetchone()[0]
    recorded = json.loads(env)
    assert recorded["numpy"] == np.__version__
    assert recorded["python"] == sys.version.split()[0]
    doc = json.loads(sqlite3.connect(log_path).execute("SELECT doc FROM digests").fetchone()[0])
    # numpy is not hashed: which module the name is counts, not its code
    assert [e[:2] for e in doc["entries"][1:]] == [
        ["global tests.test_dependencies.np", "installed numpy"]
    ]


def test_big_globals_are_hashed_once_per_run(
    module, log_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = module(
        "nb_big",
        "import numpy as np\nBIG = np.ones(2_000_000)\ndef s(i):\n    return float(BIG[i])\n",
    )
    hashed: list[int] = []  # the real digest, counted: which objects it walked
    real = walk.digest_value

    def counted(obj: object) -> object:
        hashed.append(id(obj))
        return real(obj)

    monkeypatch.setattr(walk, "digest_value", counted)
    s = Step(nb.s)
    with workflow("big") as run:
        assert [s(i) for i in range(3)] == [1.0, 1.0, 1.0]
    assert hashed.count(id(nb.BIG)) == 1  # once for three calls
    assert list(run.deps.big) == [id(nb.BIG)]  # cached by object for the rest of the run
    nb.BIG[0] = 7.0  # in place: seen from the next run on
    with workflow("big") as run:
        assert s(0) == 7.0 and s(1) == 1.0
    assert run.steps_run == 2  # the array's digest changed for every call
    assert hashed.count(id(nb.BIG)) == 2  # once more in the second run
    with workflow("big") as run:
        nb.BIG = np.full(3, 5.0)  # rebound within a run: seen at the next call
        assert s(1) == 5.0 and s(2) == 5.0
    assert run.steps_run == 2 and hashed.count(id(nb.BIG)) == 1


def test_values_that_cannot_be_digested_count_by_type_and_warn_once(module, log_path: Path) -> None:
    nb = module(
        "nb_opaque",
        "import threading\nLOCK = threading.Lock()\nF = 1\n"
        "def s(x):\n    return x * F if LOCK else 0\n",
    )
    s = Step(nb.s)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with workflow("opaque"):
                assert s(1) == 1 and s(2) == 2
    said = [str(w.message) for w in caught if issubclass(w.category, DurableWarning)]
    assert len(said) == 1 and "nb_opaque.LOCK cannot be digested" in said[0]
    runs = sqlite3.connect(log_path).execute("SELECT steps_run, steps_replayed FROM runs")
    assert runs.fetchall() == [(2, 0), (0, 2)]
    nb.F = 3  # a change that is seen: its reason also names what is not
    with workflow("opaque"):
        assert s(1) == 3
    assert reasons(log_path, "s")[-1] == (
        "global nb_opaque.F changed (1 -> 3) since run 1 (nb_opaque.LOCK counted by type only)"
    )
    docs = sqlite3.connect(log_path).execute("SELECT doc FROM digests").fetchall()
    assert {tuple(json.loads(d)["opaque"]) for (d,) in docs} == {("global nb_opaque.LOCK",)}


def test_partial_arguments_are_part_of_the_key(log_path: Path) -> None:
    calls: list[int] = []

    def base(a: int, b: int) -> int:
        calls.append(a)
        return a * b

    for a, expected in [(3, 21), (3, 21), (4, 28)]:
        with workflow("partial"):
            assert step(functools.partial(base, a), 7) == expected
    assert calls == [3, 4]
    names = sqlite3.connect(log_path).execute("SELECT DISTINCT name, args_repr FROM steps")
    assert names.fetchall() == [("base", "3, 7"), ("base", "4, 7")]


def test_arguments_are_bound_to_the_signature(log_path: Path) -> None:
    calls: list[int] = []

    @step
    def g(x: int, y: int = 2, *, z: int = 0) -> int:
        calls.append(x)
        return x * y + z

    with workflow("bind"):
        assert g(5) == 10
    for call in (lambda: g(x=5), lambda: g(5, 2), lambda: g(5, y=2, z=0)):
        with workflow("bind"):
            assert call() == 10
    with workflow("bind"):
        assert g(5, z=1) == 11
    assert calls == [5, 5]


def test_structured_arrays_with_other_fields_differ() -> None:
    xy = np.zeros(3, dtype=[("x", "f8"), ("y", "f8")])
    latlon = np.zeros(3, dtype=[("lat", "f8"), ("lon", "f8")])
    assert args_digest((xy,), {}) != args_digest((latlon,), {})
    assert args_digest((xy,), {}) == args_digest((xy.copy(),), {})
    assert value_digest(np.arange(6.0)[::2]) == value_digest(np.array([0.0, 2.0, 4.0]))


def test_digests_of_sets_inside_objects_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    script = (
        "import dataclasses\nfrom durable_nb.replay.digests import args_digest, value_digest\n"
        "@dataclasses.dataclass(frozen=True)\n"
        "class Cfg:\n    tags: frozenset\n    lr: float = 0.1\n"
        "class Plain:\n    def __init__(self):\n        self.names = {'a', 'b', 'c', 'd'}\n"
        "print(value_digest(Cfg(frozenset('abcdefg'))), args_digest((Plain(),), {}))\n"
        "import pydantic, pandas as pd\n"
        "class Train(pydantic.BaseModel):\n    lr: float\n    epochs: int\n    name: str\n"
        "print(value_digest(Train(lr=0.1, epochs=5, name='x')))  # its pickle holds a set\n"
        "class Fitted:\n    def __init__(self, w):\n        self.w = w\n"
        "frame = pd.DataFrame({'model': [Fitted(1), Fitted(2)], 'score': [0.5, 0.7]})\n"
        "print(value_digest(frame))  # pandas would hash str(Fitted): a memory address\n"
        "print(value_digest(pd.Series([1.0, 'a', (1, 2)], dtype=object)))  # pandas raises\n"
    )
    outputs = set()
    for seed in ("1", "2", "3"):
        proc = python(script, cwd=tmp_path, env_extra={"PYTHONHASHSEED": seed})
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.add(out)
    assert len(outputs) == 1 and len(outputs.pop().split()) == 5


def test_plan_writes_nothing_and_names_the_first_step_to_run(module, log_path: Path) -> None:
    nb = module("nb_plan", NOTEBOOK)
    s = Step(nb.s)

    @workflow("planned")
    def flow() -> list[int]:
        return [s(1), s(2), s(3)]

    flow()
    before = log_path.read_bytes(), Path(f"{log_path}-wal").read_bytes()
    everything = durable_nb.plan(flow)
    assert (everything.step, everything.replayed) == (None, 3)
    assert str(everything) == "plan planned: 3 steps replay; nothing would run"
    nb.FACTOR = 11
    stop = durable_nb.plan(flow)
    assert (stop.step, stop.args, stop.replayed) == ("s", "1", 0)
    assert stop.reason == "global nb_plan.FACTOR changed (10 -> 11) since run 1"
    assert (log_path.read_bytes(), Path(f"{log_path}-wal").read_bytes()) == before
    assert nb.calls == [1, 2, 3]  # the plan ran no step


def test_accept_makes_changed_steps_replay_and_leaves_a_note(module, any_log: Path | str) -> None:
    nb = module("nb_accept", NOTEBOOK)
    with workflow("acc"):
        Step(nb.s)(1)
    nb = module("nb_accept", NOTEBOOK.replace("return 2 * x", "y = 2 * x\n        return y"))
    s = Step(nb.s)
    assert durable_nb.plan(workflow("acc")(lambda: s(1))).step == "s"
    assert durable_nb.accept("acc", "s") == 1
    with workflow("acc") as run:
        assert s(1) == 20
    assert run.steps_replayed == 1 and nb.calls == []
    note = log_sql(any_log).execute("SELECT kind, detail FROM notes").fetchone()
    assert note[0] == "accept" and "1 records accepted for digests " in note[1]
    assert f"{getpass.getuser()}@{socket.gethostname()}" in note[1]  # who accepted
    durable_nb.get_store().forget("acc", "s")  # undone: the accepted record is gone
    with workflow("acc") as run:
        assert s(1) == 20
    assert run.steps_run == 1 and nb.calls == [1]
    nb.FACTOR = 3  # a later change still counts
    with workflow("acc") as run:
        assert s(1) == 6
    assert run.steps_run == 1
    with pytest.raises(durable_nb.DurableError, match="no completed steps"):
        durable_nb.accept("nothing-here")


def test_records_older_than_dependency_digests(module, log_path: Path) -> None:
    """A log written before dependency digests: its records of steps with no dependencies
    still replay; those of steps with dependencies run again, said once."""
    nb = module("nb_old", NOTEBOOK + "\n    def alone(x):\n        return x + 1\n")
    s, alone = Step(nb.s), Step(nb.alone)
    with workflow("old"):
        s(1), alone(1)
    conn = sqlite3.connect(log_path)
    with conn:  # what durable_nb 0.1 wrote: the step's own code digest, no document
        conn.execute("UPDATE steps SET code_digest = ? WHERE name = 's'", (s.code_digest,))
        conn.execute("DELETE FROM digests")
    with workflow("old") as run:
        assert (s(1), alone(1)) == (20, 2)
    assert (run.steps_run, run.steps_replayed) == (1, 1)
    assert "written before digests covered dependencies" in run.remarks[-1]
    assert "predates dependency digests" in reasons(log_path, "s")[1]


VERSIONED = """
import sys
import durable_nb, fakepkg
from durable_nb import step, workflow

@step
def recorded(x):
    return fakepkg.f(x)

@step(track_versions=True)
def tracked(x):
    return fakepkg.f(x)

durable_nb.open_log(sys.argv[1])
with workflow("versions") as run:
    recorded(1), tracked(1)
print(run.steps_replayed, run.steps_run)
print(run.remarks)
print(durable_nb.steps(workflow="versions")["reason"].tolist()[-1])
"""


def test_package_versions_are_recorded_and_tracked_on_demand(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"  # an installed package, as pip lays it out
    (site / "fakepkg").mkdir(parents=True)
    env = {"PYTHONPATH": f"{Path(__file__).resolve().parents[1]}:{site}"}
    outputs = []
    for version in ("1.0", "2.0"):
        (site / "fakepkg" / "__init__.py").write_text(
            f"__version__ = {version!r}\ndef f(x):\n    return x * 2\n"
        )
        proc = python(VERSIONED, str(tmp_path / "v.db"), cwd=tmp_path, env_extra=env)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outputs.append(out.splitlines())
    assert outputs[0][:2] == ["0 2", "[]"]
    assert outputs[1][0] == "1 1"  # recorded replays, tracked runs again
    assert outputs[1][1] == "['fakepkg 1.0 -> 2.0 since the stored results of recorded']"
    assert outputs[1][2] == "fakepkg 1.0 -> 2.0 since run 1"


def test_accept_takes_the_record_the_last_run_used(module, any_log: Path | str) -> None:
    """v*1, then v*2, then v*1 again (its old record replays); after a rename, accept must
    bring back the v*1 result that the last run used, not the newer v*2 one."""
    src = "def f(v):\n    return v * 1\n"
    for source, expected in [(src, 10), (src.replace("* 1", "* 2"), 20), (src, 10)]:
        nb = module("nb_flip", source)
        with workflow("flip"):
            assert Step(nb.f)(10) == expected
    nb = module("nb_flip", "def f(v):\n    w = v\n    return w * 1\n")
    s = Step(nb.f)
    assert durable_nb.accept("flip", "f") == 1
    with workflow("flip") as run:
        assert s(10) == 10
    assert run.steps_replayed == 1


def test_accepted_records_still_see_the_code_of_their_arguments(
    module, any_log: Path | str
) -> None:
    nb = module("nb_cb", "def apply(fn, v):\n    return fn(v)\ndef cb(v):\n    return v * 2\n")
    with workflow("cb"):
        assert Step(nb.apply)(nb.cb, 3) == 6
    nb = module(
        "nb_cb", "def apply(fn, v):\n    r = fn(v)\n    return r\ndef cb(v):\n    return v * 2\n"
    )
    s = Step(nb.apply)
    assert durable_nb.accept("cb", "apply") == 1
    with workflow("cb") as run:
        assert s(nb.cb, 3) == 6
    assert run.steps_replayed == 1
    nb = module(
        "nb_cb", "def apply(fn, v):\n    r = fn(v)\n    return r\ndef cb(v):\n    return v * 200\n"
    )
    with workflow("cb") as run:
        assert Step(nb.apply)(nb.cb, 3) == 600
    assert run.steps_run == 1


SUBTLE = """
    import numpy as np

    class Cfg(dict):
        pass

    class Slotted:
        __slots__ = ("names",)
        def __init__(self, names):
            self.names = names

    class Node:
        def __init__(self, value, parent=None):
            self.value, self.parent, self.children = value, parent, []
            if parent is not None:
                parent.children.append(self)

    class Net:
        def forward(self, v):
            return v * 2

    class Trainer:
        def __init__(self, net):
            self.net = net
        def run(self, v):
            return self.net.forward(v)

    def scale(v):
        return v * 2

    def loss(v):
        return v * 2

    CFG = Cfg(lr=0.1)
    SLOTTED = Slotted({"a", "b", "c"})
    ROOT = Node(1)
    Node(2, ROOT)
    PIPE = [scale]
    TR = Trainer(Net())

    def by_subclass(v):
        return CFG["lr"] * v

    def by_slots(v):
        return len(SLOTTED.names) * v

    def by_cycle(v):
        return (ROOT.value + ROOT.children[0].value) * v

    def by_list_of_functions(v):
        return PIPE[0](v)

    def by_default(v, loss_fn=loss):
        return loss_fn(v)

    def by_nested_object(v):
        return TR.run(v)

    def apply(fns, v):
        return fns[0](v)
"""


def test_values_hiding_code_or_state_count(module, log_path: Path) -> None:
    """Subclasses of builtins, slots, cycles, functions inside values, defaults and objects
    inside objects: a change in any of them runs the step again."""
    nb = module("nb_subtle", SUBTLE)
    names = ["by_subclass", "by_slots", "by_cycle", "by_list_of_functions", "by_default",
             "by_nested_object"]  # fmt: skip

    def run_all(nb: ModuleType) -> list[object]:
        with workflow("subtle"):
            return [Step(getattr(nb, n))(3) for n in names] + [Step(nb.apply)([nb.scale], 3)]

    first = run_all(nb)
    assert first == [0.30000000000000004, 9, 9, 6, 6, 6, 6]
    with workflow("subtle") as run:
        again = [Step(getattr(nb, n))(3) for n in names] + [Step(nb.apply)([nb.scale], 3)]
    assert again == first and run.steps_replayed == 7
    changed = SUBTLE
    for old, new in [
        ("lr=0.1", "lr=0.9"),
        ('{"a", "b", "c"}', '{"a", "b", "c", "d"}'),
        ("Node(1)", "Node(100)"),
        ("return v * 2\n\n    def loss", "return v * 200\n\n    def loss"),
        ("def loss(v):\n        return v * 2", "def loss(v):\n        return v * 20"),
        (
            "def forward(self, v):\n            return v * 2",
            "def forward(self, v):\n            return v * 7",
        ),
    ]:
        assert old in changed
        changed = changed.replace(old, new)
    nb = module("nb_subtle", changed)
    assert run_all(nb) == [2.7, 12, 306, 600, 60, 21, 600]


def test_a_big_array_changed_in_place_between_two_calls_is_seen(module, log_path: Path) -> None:
    nb = module(
        "nb_inplace",
        "import numpy as np\nARR = np.zeros(300_000)\ndef s(tag):\n    return float(ARR.sum())\n",
    )
    s = Step(nb.s)
    with workflow("inplace"):
        assert s("a") == 0.0
        nb.ARR += 1
        assert s("b") == 300_000.0
    nb.ARR[:] = 0
    with workflow("inplace") as run:
        assert s("a") == 0.0
        nb.ARR += 5
        assert s("b") == 1_500_000.0
    assert (run.steps_replayed, run.steps_run) == (1, 1)


@pytest.mark.parametrize(
    "make",
    [
        "np.zeros((600, 500))",
        "np.zeros((600, 500), order='F')",
        "np.zeros(600_000)[::2]",
        "np.zeros((700, 600))[:, :500]",  # strided in two dimensions: sampled in place
    ],
)
def test_big_arrays_of_every_layout_changed_in_place_are_seen(
    module, log_path: Path, make: str
) -> None:
    nb = module(
        "nb_layouts",
        f"import numpy as np\nARR = {make}\ndef s(tag):\n    return float(ARR.sum())\n",
    )
    s = Step(nb.s)
    with workflow("layouts") as run:
        assert s("a") == 0.0
        assert s("a") == 0.0  # a second call of the same arguments: the next occurrence
        nb.ARR += 1
        assert s("a") == nb.ARR.size
    with workflow("layouts") as run:
        nb.ARR[:] = 0
        assert s("a") == s("a") == 0.0  # replayed: recorded with zeros
        nb.ARR += 2  # changed in place between calls: the third runs
        assert s("a") == 2 * nb.ARR.size
    assert (run.steps_replayed, run.steps_run) == (2, 1)


def test_a_big_array_given_a_new_shape_in_place_is_a_new_value(module, log_path: Path) -> None:
    nb = module(
        "nb_shape",
        "import numpy as np\nARR = np.zeros((600, 500))\ndef s():\n    return ARR.ndim\n",
    )
    s = Step(nb.s)
    with workflow("shape") as run:
        assert s() == 2
        nb.ARR.shape = (300_000,)  # the same memory and values, another shape
        assert s() == 1
    assert run.steps_run == 2


EDITED = """
import sys, pathlib
sys.path.insert(0, sys.argv[2])
import durable_nb, edited_helpers
from durable_nb import step, workflow
durable_nb.open_log(sys.argv[1])
if len(sys.argv) > 3:  # edit the file after importing it, and do not reload
    pathlib.Path(sys.argv[2], "edited_helpers.py").write_text("def f(v):\\n    return v * 99\\n")
with workflow("edited"):
    print(step(edited_helpers.f, 5))
"""


def test_a_module_edited_on_disk_but_not_reloaded_is_digested_as_it_runs(tmp_path: Path) -> None:
    (tmp_path / "edited_helpers.py").write_text("def f(v):\n    return v * 10\n")
    log = str(tmp_path / "e.db")
    outputs = []
    for extra in (["edit"], []):
        proc = python(EDITED, log, str(tmp_path), *extra, cwd=tmp_path)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(out.strip())
    assert outputs == ["50", "495"]  # the old code ran; the new file's code runs, not replays


def test_review_cases_that_replayed_stale_results(module, log_path: Path) -> None:
    """A big array changed in place before another step's first call in the run; a
    partial's function changed; equal arguments made of one object or of two."""
    src = (
        "import functools\nimport numpy as np\nX = np.zeros(100_000)\n"
        "def a(tag):\n    return float(X.sum())\ndef b(tag):\n    return float(X.sum())\n"
        "def helper(x, y):\n    return x + y\ndef apply(fn, v):\n    return fn(v)\n"
    )
    nb = module("nb_review", src)
    with workflow("review"):
        assert Step(nb.a)("x") == 0.0
        nb.X += 1
        assert Step(nb.b)("x") == 100_000.0  # b's first walk, the big value cached by a
        assert Step(nb.apply)(functools.partial(nb.helper, 2), 3) == 5
    nb = module("nb_review", src.replace("return x + y", "return x * y"))
    with workflow("review") as run:
        nb.X += 1  # a's record was made with zeros: it runs; b's with ones: it replays
        assert (Step(nb.a)("x"), Step(nb.b)("x")) == (100_000.0, 100_000.0)
        assert Step(nb.apply)(functools.partial(nb.helper, 2), 3) == 6
    assert (run.steps_run, run.steps_replayed) == (2, 1)
    text = "".join(["hel", "lo"])
    assert args_digest(("hello", "hello"), {}) == args_digest(("hello", text), {})
    assert value_digest(["hello", "hello"]) == value_digest(["hello", text])


def test_packages_that_import_each_other_and_deep_values_do_not_break_a_call(
    module, log_path: Path
) -> None:
    pkg = Path(sys.path[0]) / "cyclic_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from cyclic_pkg import sub\n")
    (pkg / "sub.py").write_text("import cyclic_pkg\ndef f(x):\n    return x + 1\n")
    nb = module("nb_cyclic", "import cyclic_pkg\ndef s(x):\n    return cyclic_pkg.sub.f(x)\n")
    with workflow("cyclic"):
        assert Step(nb.s)(1) == 2
    deep: list[object] = [1]
    other: list[object] = [2]
    for _ in range(3000):
        deep, other = [deep], [other]
    assert args_digest((deep,), {}) != args_digest((other,), {})


COUNTS = __import__("collections").Counter("aab")
TOP = COUNTS.most_common  # a package's bound method: the object it is bound to counts


@step
def top_letter() -> list[tuple[str, int]]:
    return TOP(1)


def test_a_global_bound_method_of_a_package_object_sees_its_object_change(
    log_path: Path,
) -> None:
    with workflow("bound"):
        assert top_letter() == [("a", 2)]
    COUNTS.update("bbbb")
    try:
        with workflow("bound") as run:
            assert top_letter() == [("b", 5)]  # not the stale [("a", 2)]
        assert run.steps_replayed == 0
    finally:
        COUNTS.subtract("bbbb")


def test_arguments_too_big_to_walk_are_told_apart_by_their_pickle() -> None:
    import argparse

    many = [argparse.Namespace(i=i) for i in range(600)]  # past the walk's budget
    other = [*many[:-1], argparse.Namespace(i=-1)]
    assert args_digest((many,), {}) != args_digest((other,), {})
    assert args_digest((many,), {}) == args_digest(
        ([argparse.Namespace(i=i) for i in range(600)],), {}
    )


LOCAL_IMPORTS = """
import sys
sys.path.insert(0, sys.argv[2])
import durable_nb
from durable_nb import step, workflow
durable_nb.open_log(sys.argv[1])

@step
def inside(x):
    from local_cfg import RATE  # imported in the body: no global of the step names it
    return x + RATE

@step
def aliased(x):
    import local_cfg as c
    return x + c.RATE

@step
def by_name(x):
    import local_cfg
    return x + getattr(local_cfg, "RATE")

@step
def submodule(x):
    from local_pkg import sub  # a submodule: `local_pkg` itself holds nothing of it
    return x + sub.RATE

with workflow("local"):
    print(inside(0), aliased(0), by_name(0), submodule(0))
"""


def test_modules_imported_in_a_step_body_count_in_a_fresh_process(tmp_path: Path) -> None:
    """``from cfg import RATE`` (or ``import cfg as c``, ``getattr(cfg, "RATE")``) inside
    a step: editing cfg.py and running again in a new process runs the steps again."""
    log = str(tmp_path / "local.db")
    outputs = []
    (tmp_path / "local_pkg").mkdir()
    (tmp_path / "local_pkg" / "__init__.py").write_text("")
    for rate in (1, 1, 3):
        (tmp_path / "local_cfg.py").write_text(f"RATE = {rate}\n")
        (tmp_path / "local_pkg" / "sub.py").write_text(f"RATE = {rate}\n")
        proc = python(LOCAL_IMPORTS, log, str(tmp_path), cwd=tmp_path)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outputs.append(out.strip())
    assert outputs == ["1 1 1 1", "1 1 1 1", "3 3 3 3"]
    for name in ("inside", "aliased", "by_name"):
        assert reasons(Path(log), name) == [
            None,
            "global local_cfg.RATE changed (1 -> 3) since run 1",  # run 2 replayed run 1
        ]


def test_a_step_reading_globals_by_run_time_names_runs_every_time(module, log_path: Path) -> None:
    """``globals()["F"]`` or ``eval("F")``: what it reads cannot be known, so it runs, said
    once; a change of F is then never missed."""
    nb = module("nb_dynamic", "F = 1\ndef s(x):\n    return x + globals()['F']\n")
    results = []
    with pytest.warns(DurableWarning, match=r"calls globals\(\).*runs every time"):
        for f in (1, 1, 2):
            nb.F = f
            with workflow("dyn") as run:
                results.append((Step(nb.s)(0), run.steps_run))
    assert results == [(1, 1), (1, 1), (2, 1)]
    assert (
        reasons(log_path, "s")[1:]
        == [
            "what s depends on cannot be known before it runs (eval, exec or globals() in its "
            "code, or a value that cannot be read; a warning said which): it runs every time"
        ]
        * 2
    )


def test_a_users_decorator_under_step_counts(module, log_path: Path) -> None:
    """``@step`` over ``@times(n)`` of the notebook's own: n is part of what the step is."""
    source = """
        import functools
        from durable_nb import step
        def times(n):
            def decorate(fn):
                @functools.wraps(fn)
                def wrapper(*a, **kw):
                    return n * fn(*a, **kw)
                return wrapper
            return decorate
        @step
        @times(2)
        def s(x):
            return x
    """
    nb = module("nb_decorated", source)
    with workflow("deco"):
        assert nb.s(1) == 2
    with workflow("deco") as run:
        assert nb.s(1) == 2
    assert run.steps_replayed == 1
    nb = module("nb_decorated", source.replace("@times(2)", "@times(5)"))
    with workflow("deco") as run:
        assert nb.s(1) == 5
    assert reasons(log_path, "s")[1] == "closure variable n changed (2 -> 5) since run 1"


def _with_attrs(frame: object) -> object:
    frame.attrs["unit"] = "m"  # type: ignore[attr-defined]
    return frame


def test_pandas_values_differ_in_everything_a_step_can_see() -> None:
    """Values the pandas hash treats as equal, and labels, names and dtypes it leaves out:
    each pair would make a step compute something else, so each digests differently."""
    import pandas as pd

    frame = pd.DataFrame({"a": [1, 2]})
    pairs = [
        (pd.Series(pd.Categorical(["x", "y"], categories=["x", "y"])),
         pd.Series(pd.Categorical(["x", "y"], categories=["y", "x"]))),
        (pd.Series(pd.Categorical(["x", "y"])),
         pd.Series(pd.Categorical(["x", "y"], ordered=True))),
        (frame, frame.rename_axis("key")),
        (frame, frame.rename_axis(columns="c")),
        (pd.DataFrame({"v": [1]}, index=pd.MultiIndex.from_tuples([(1, 2)], names=["a", "b"])),
         pd.DataFrame({"v": [1]}, index=pd.MultiIndex.from_tuples([(1, 2)], names=["c", "d"]))),
        (pd.Series([1], index=pd.DatetimeIndex(["2026-01-01"], tz="UTC")),
         pd.Series([1], index=pd.DatetimeIndex(["2026-01-01"], tz="Europe/Paris"))),
        (pd.DataFrame({1: [1]}), pd.DataFrame({"1": [1]})),
        (frame, _with_attrs(frame.copy())),
        (pd.Series([0.0]), pd.Series([-0.0])),
        (pd.Series(["a", None], dtype=object), pd.Series(["a", np.nan], dtype=object)),
        (np.array(5), np.array(6)),  # 0-d arrays (they once raised inside the digest)
    ]  # fmt: skip
    for a, b in pairs:
        assert value_digest(a) != value_digest(b), (a, b)
        assert value_digest(a) == value_digest(a.copy())


def test_dict_keys_are_not_attribute_names_and_installed_wrappers_are_looked_through(
    module, log_path: Path
) -> None:
    """A string such as the key "history" is not ``helpers.history`` (a list its helper
    appends to); a ContextDecorator's wrapper (contextlib's code, as torch.no_grad) is not
    the step's code even though functools.wraps gave it the step's module."""
    helpers = module("dict_keys_helpers", "history = []\ndef score(x):\n    history.append(x)\n"
                     "    return x\n")  # fmt: skip
    nb = module(
        "nb_keys",
        """
        import contextlib
        import dict_keys_helpers
        class quiet(contextlib.ContextDecorator):
            def __enter__(self):
                self.entered = getattr(self, "entered", 0) + 1
            def __exit__(self, *exc):
                return False
        def keyed(x):
            return {"history": dict_keys_helpers.score(x)}
        @quiet()
        def wrapped(x):
            return x
        """,
    )
    for _ in range(2):
        with workflow("keys") as run:
            assert Step(nb.keyed)(1) == {"history": 1} and Step(nb.wrapped)(2) == 2
    assert (run.steps_replayed, helpers.history) == (2, [1])


def test_a_wrapped_cycle_does_not_hang_and_numpy_options_are_numbers() -> None:
    class Loop:
        def __call__(self, x: int) -> int:
            return x

    a, b = Loop(), Loop()
    a.__wrapped__, b.__wrapped__ = b, a  # type: ignore[attr-defined]
    assert step(a).name  # returns (it once looped forever)
    assert step(retries=np.int64(2), backoff=np.float32(2.0))(abs).retries == 2
    with pytest.raises(ValueError, match="backoff must be a number"):
        step(backoff=float("nan"))(abs)


def test_a_big_array_resized_in_place_between_calls_runs_again(module, log_path: Path) -> None:
    nb = module(
        "nb_resize",
        "import numpy as np\nARR = np.ones(1_000_000)\ndef s():\n    return float(ARR.sum())\n",
    )
    s = Step(nb.s)
    with workflow("resize") as run:
        assert s() == 1_000_000.0
        nb.ARR.resize(3_000_000, refcheck=False)  # frees the memory a kept view would read
        assert s() == 1_000_000.0  # the new elements are zeros: a new shape, so it runs
    assert run.steps_run == 2


REVIEWED = """
import collections, dataclasses, functools, types
import nb_outputs_helpers as helpers

@dataclasses.dataclass
class Cfg:
    lr: float
    def __post_init__(self):
        self.scale = 1

CFG = Cfg(0.5)
ORDER = {"a": 1, "b": 2}
DD = collections.defaultdict(lambda: 0)

def loss(x):
    return x * 2

NS = types.SimpleNamespace(loss=loss, lr=1)

class Aug:
    k = 1
    def add(self, d):
        d["aug"] = self.k

AUG = Aug()

@functools.singledispatch
def fmt(x):
    return "any"

@fmt.register
def _(x: int):
    return x * 10

def by_fields():
    return CFG.lr * CFG.scale

def by_order():
    return list(ORDER)

def by_factory():
    return DD.default_factory()  # what DD["missing"] would be

def by_namespace(x):
    return NS.loss(x) * NS.lr

def by_module(x):
    d = {"x": x}
    helpers.update(d)
    return d

def by_object():
    d = {}
    AUG.add(d)
    return d

def by_dispatch(x):
    return fmt(x)

def scaled(x):
    return x * scaled.k

scaled.k = 2

def by_attribute(x):
    return scaled(x)

class Meta(type):
    def k(cls):
        return 2

class WithMeta(metaclass=Meta):
    pass

def by_metaclass(x):
    return WithMeta.k() * x

from durable_nb import step

@step
def by_own_attribute(x):
    return x * by_own_attribute.k

by_own_attribute.k = 2

def counted(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        wrapper.calls += 1  # its own state: a replay does not update it
        return fn(*args)
    wrapper.calls = 0
    return wrapper

@counted
def featurize(v):
    return v * 3

def by_counted(x):
    return featurize(x)
"""


@pytest.mark.parametrize(
    ("step_name", "args", "first", "change", "second"),
    [
        ("by_fields", (), 0.5, lambda nb, m: setattr(nb.CFG, "scale", 10), 5.0),
        ("by_order", (), ["a", "b"], lambda nb, m: setattr(nb, "ORDER", {"b": 2, "a": 1}),
         ["b", "a"]),
        ("by_factory", (), 0,
         lambda nb, m: setattr(nb, "DD", nb.collections.defaultdict(lambda: 5)), 5),
        ("by_namespace", (3,), 6,
         lambda nb, m: setattr(nb.NS, "loss", lambda x: x * 1000), 3000),
        ("by_module", (1,), {"x": 1, "y": 2},
         lambda nb, m: m("nb_outputs_helpers", "def update(d):\n    d['y'] = d['x'] * 3\n"),
         {"x": 1, "y": 3}),
        ("by_object", (), {"aug": 1}, lambda nb, m: setattr(nb.Aug, "k", 7), {"aug": 7}),
        ("by_object", (), {"aug": 1}, lambda nb, m: setattr(nb.AUG, "k", 9), {"aug": 9}),
        ("by_dispatch", (1,), 10,
         lambda nb, m: nb.fmt.register(int, lambda x: x * 1000), 1000),
        ("by_attribute", (3,), 6, lambda nb, m: setattr(nb.scaled, "k", 5), 15),
        ("by_metaclass", (3,), 6, lambda nb, m: setattr(nb.Meta, "k", lambda cls: 9), 27),
        ("by_own_attribute", (3,), 6, lambda nb, m: setattr(nb.by_own_attribute, "k", 5), 15),
        ("by_counted", (3,), 9,  # calls counted by the wrapper itself do not count; code does
         lambda nb, m: setattr(nb, "featurize", nb.counted(lambda v: v * 30)), 90),
    ],
)  # fmt: skip
def test_review_cases_of_values_and_code_a_step_reaches(
    module, log_path: Path, step_name: str, args: tuple[object, ...], first: object,
    change: object, second: object,
) -> None:  # fmt: skip
    """Cases a new user found replaying stale results: attributes a dataclass sets besides
    its fields, a dict's order, a defaultdict's factory, a function in a SimpleNamespace, a
    module's or a user object's method called as a statement, singledispatch, an attribute
    set on a function or a step, a metaclass."""
    helpers = module("nb_outputs_helpers", "def update(d):\n    d['y'] = d['x'] * 2\n")
    assert helpers is not None
    nb = module(f"nb_reviewed_{step_name}", REVIEWED)
    fn = getattr(nb, step_name)
    s = fn if isinstance(fn, Step) else Step(fn)
    for _ in range(2):
        with workflow(step_name):
            assert s(*args) == first
    change(nb, module)  # type: ignore[operator]
    with workflow(step_name) as run:
        assert s(*args) == second
    assert run.steps_run == 1
    with workflow(step_name) as run:  # and the new value replays
        assert s(*args) == second
    assert run.steps_replayed == 1


def test_a_value_digested_by_an_older_rule_says_so(module, log_path: Path) -> None:
    """A log written before a dict's order counted: its digest of an unsorted dict differs
    from today's although the value is the same. The reason says it is the rule, not the
    value, and accept brings it back."""
    nb = module("nb_rules", "ORDER = {'b': 2, 'a': 1}\ndef s():\n    return list(ORDER)\n")
    s = Step(nb.s)
    with workflow("rules"):
        assert s() == ["b", "a"]
    conn = sqlite3.connect(log_path)
    text = conn.execute("SELECT doc FROM digests").fetchone()[0]
    for n, (stored_as, said) in enumerate([
        ({"b": 2, "a": 1}, "global nb_rules.ORDER is digested by a newer rule (durable_nb was "
                           "upgraded; its value looks the same: accept replays it) since run 1"),
        ({"b": 2, "a": 0}, "global nb_rules.ORDER changed ({'b': 2, 'a': 1} -> {'b': 2, 'a': 1}) "
                           "since run 2"),  # another value, whatever its short repr says
    ]):  # fmt: skip
        with conn:  # as the older rule stored it: no "rules" in its document
            doc = json.loads(text)
            del doc["rules"]
            for entry in doc["entries"]:
                if entry[0] == "global nb_rules.ORDER":
                    entry[1] = legacy_digest(stored_as)
            conn.execute("INSERT INTO digests VALUES (?, ?)", (f"older{n}", json.dumps(doc)))
            conn.execute("UPDATE steps SET code_digest = ?", (f"older{n}",))
        with workflow("rules") as run:
            assert s() == ["b", "a"]
        assert run.steps_run == 1
        assert reasons(log_path, "s")[-1] == said


def test_caches_and_keyword_order_do_not_change_a_digest() -> None:
    import dataclasses

    @dataclasses.dataclass
    class Cfg:
        lr: float

        @functools.cached_property
        def derived(self) -> float:
            return self.lr * 2

    cfg = Cfg(0.5)
    before = value_digest(cfg)
    assert cfg.derived == 1.0  # filled in the object's __dict__ now
    assert value_digest(cfg) == before

    def f(a: int = 0, b: int = 0) -> int:
        return a + b

    assert value_digest(functools.partial(f, a=1, b=2)) == value_digest(
        functools.partial(f, b=2, a=1)
    )  # called the same way: one digest
    assert value_digest({"a": 1, "b": 2}) != value_digest({"b": 2, "a": 1})  # iterated apart


def test_names_a_module_serves_through_its_getattr_count(module, log_path: Path) -> None:
    """PEP 562: ``lazy.RATE`` served by the module's ``__getattr__``, from a dict it reads."""
    lazy = module("nb_lazy", "_V = {'RATE': 1}\ndef __getattr__(name):\n    return _V[name]\n")
    nb = module("nb_lazy_user", "import nb_lazy\ndef s():\n    return nb_lazy.RATE\n")
    s = Step(nb.s)
    for expected, change in [(1, None), (1, None), (5, lambda: lazy._V.update(RATE=5))]:
        if change:
            change()
        with workflow("lazy") as run:
            assert s() == expected
    assert run.steps_run == 1


KEEPS_STATE = """
import functools
from durable_nb import step

def memo(fn):
    @functools.wraps(fn)
    def wrapper(x):
        if x not in wrapper.cache:
            wrapper.cache[x] = fn(x)
        return wrapper.cache[x]
    wrapper.cache = {}
    return wrapper

@memo
def slow(x):
    return x * 2

@step
def uses_memo(x):
    return slow(x)

@step
def counts_itself(x):
    counts_itself.calls = getattr(counts_itself, "calls", 0) + 1
    return x + 1

class Lazy:  # __getattr__ that raises for unknown names, as many config classes do
    def __init__(self):
        self._d = {"a": 1}
    def __getattr__(self, name):
        return self.__dict__["_d"][name]

CFG = Lazy()

@step
def reads_lazy(x):
    return x + CFG.a
"""


def test_state_a_function_keeps_on_itself_is_not_an_input(module, log_path: Path) -> None:
    """A memo cache or a call counter kept on the function replays; an object whose
    ``__getattr__`` raises is still digested by its state (and never raises in the call)."""
    nb = module("nb_keeps_state", KEEPS_STATE)
    for _ in range(2):
        with workflow("state") as run:
            assert (nb.uses_memo(2), nb.counts_itself(1), nb.reads_lazy(1)) == (4, 2, 2)
    assert (run.steps_run, run.steps_replayed) == (0, 3)
    nb.CFG._d["a"] = 5  # its state changed in place: seen
    with workflow("state") as run:
        assert nb.reads_lazy(1) == 6
    assert run.steps_run == 1
    assert args_digest((nb.CFG,), {})  # as an argument: digested, no KeyError


def test_frames_of_objects_keep_duplicate_labels_apart_and_labels_stay_fast() -> None:
    import pandas as pd

    from durable_nb.replay.digests import _cells_by_str

    class P:
        def __init__(self, v: int) -> None:
            self.v = v

    one = pd.Series([P(1), P(2)], index=[0, 0])
    other = pd.Series([P(9), P(2)], index=[0, 0])
    assert value_digest(one) != value_digest(other)
    columns = pd.DataFrame([[P(1), P(2)]], columns=["a", "a"])
    assert value_digest(columns) != value_digest(pd.DataFrame([[P(1), P(3)]], columns=["a", "a"]))
    index = pd.MultiIndex.from_tuples([("x", 1), ("y", 2)])
    plain = pd.DataFrame({"c": pd.Categorical(["u", "v"])}, index=index)
    assert not _cells_by_str(plain, "DataFrame")  # hashed by pandas, as before


def test_a_lazy_import_module_getattr_does_not_make_a_step_unjudged(module, log_path: Path) -> None:
    module(
        "nb_lazypkg",
        "RATE = 3\ndef __getattr__(name):\n    import importlib\n"
        "    mod = importlib.import_module('json')\n    globals()[name] = mod\n    return mod\n",
    )
    nb = module("nb_lazy_reader", "import nb_lazypkg\ndef s():\n    return nb_lazypkg.RATE\n")
    s = Step(nb.s)
    for _ in range(2):
        with workflow("lazyimport") as run:
            assert s() == 3
    assert run.steps_replayed == 1


FOURTH = """
import functools, json, math
import pydantic
import nb_fourth_cfg as cfg

AGG = max
KIND = list
codec = json

def by_builtin():
    return AGG([1, 2, 3])

def by_class():
    return KIND([1, 2])

def by_module(x):
    return codec.dumps(x)

class Scaled:
    def __init__(self, fn, k):
        functools.update_wrapper(self, fn)
        self.fn, self.k, self.calls = fn, k, 0

    def __call__(self, *args):
        self.calls += 1  # its own state: not an input
        return self.k * self.fn(*args)

@functools.partial(Scaled, k=2)
def twice(x):
    return x + 1

def by_wrapper_object(x):
    return twice(x)

def get_rate(m):
    return m.RATE

def by_passed_module(x):
    return x * get_rate(cfg)

def model(default):
    class P(pydantic.BaseModel):
        lr: float = default
    return P

P = model(0.1)

def by_pydantic():
    return P().lr

SPLIT = str.split

def by_descriptor(text):
    return SPLIT(text)
"""


@pytest.mark.parametrize(
    ("step_name", "args", "first", "change", "second"),
    [
        ("by_builtin", (), 3, lambda nb: setattr(nb, "AGG", min), 1),
        ("by_class", (), [1, 2], lambda nb: setattr(nb, "KIND", tuple), (1, 2)),
        ("by_module", (1,), "1", lambda nb: setattr(nb, "codec", nb.math), None),
        ("by_wrapper_object", (1,), 4, lambda nb: setattr(nb.twice, "k", 5), 10),
        ("by_passed_module", (2,), 20, lambda nb: setattr(nb.cfg, "RATE", 30), 60),
        ("by_pydantic", (), 0.1, lambda nb: setattr(nb, "P", nb.model(0.2)), 0.2),
        ("by_descriptor", ("a b",), ["a", "b"], lambda nb: setattr(nb, "SPLIT", str.upper),
         "A B"),
    ],
)  # fmt: skip
def test_fourth_review_cases_that_replayed_stale_results(
    module, log_path: Path, step_name: str, args: tuple[object, ...], first: object,
    change: object, second: object,
) -> None:  # fmt: skip
    """Which installed function, class or module a name refers to (``AGG = max`` -> ``min``),
    a decorator of the user's written as a class (its ``k``), a user module passed on to a
    helper that reads it, a pydantic model's field defaults, a method descriptor global
    (``str.split``: judged, not a loop)."""
    module("nb_fourth_cfg", "RATE = 10\n")
    nb = module(f"nb_fourth_{step_name}", FOURTH)
    s = Step(getattr(nb, step_name))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DurableWarning)  # judged: no "cannot be read"
        for _ in range(2):
            with workflow(step_name):
                assert s(*args) == first
        change(nb)  # type: ignore[operator]
        with workflow(step_name) as run:
            if second is None:  # math.dumps: the call fails, as it would without a log
                with pytest.raises(AttributeError):
                    s(*args)
                return
            assert s(*args) == second
    assert run.steps_run == 1
    assert reasons(log_path, step_name)[-1]
    with workflow(step_name) as run:  # and the new value replays
        assert s(*args) == second
    assert run.steps_replayed == 1


def test_an_installed_name_swapped_says_which_was_which(module, log_path: Path) -> None:
    nb = module("nb_fourth_reason", FOURTH.replace("import nb_fourth_cfg as cfg", ""))
    s = Step(nb.by_builtin)
    with workflow("swap"):
        s()
    nb.AGG = min
    with workflow("swap"):
        s()
    assert reasons(log_path, "by_builtin")[-1] == (
        "global nb_fourth_reason.AGG changed ('builtins.max' -> 'builtins.min') since run 1"
    )


def test_decorators_inside_a_function_count(module, log_path: Path) -> None:
    source = """
        def times(k):
            def wrap(fn):
                return lambda y: k * fn(y)
            return wrap

        def by_inner(x):
            @times(2)
            def g(y):
                return y + 1
            return g(x)
    """
    nb = module("nb_inner_decorator", source)
    with workflow("inner"):
        assert Step(nb.by_inner)(1) == 4
    nb = module("nb_inner_decorator", source.replace("@times(2)", "@times(3)"))
    with workflow("inner") as run:
        assert Step(nb.by_inner)(1) == 6
    assert run.steps_run == 1
    assert reasons(log_path, "by_inner")[-1] == "code of by_inner changed since run 1"


def test_a_module_of_the_users_named_like_the_stdlibs_is_the_users(module, log_path: Path) -> None:
    assert "tabnanny" not in sys.modules  # (the stdlib's is never imported by the suite)
    tab = module("tabnanny", "def helper(x):\n    return x + 1\n")
    nb = module("nb_stdlib_named", "import tabnanny\ndef s(x):\n    return tabnanny.helper(x)\n")
    with workflow("named"):
        assert Step(nb.s)(1) == 2
    module("tabnanny", "def helper(x):\n    return x + 2\n")
    assert tab is sys.modules["tabnanny"]
    with workflow("named") as run:
        assert Step(nb.s)(1) == 3
    assert run.steps_run == 1
    assert reasons(log_path, "s")[-1] == "code of tabnanny.helper changed since run 1"


def test_arguments_whose_reading_raises_or_that_differ_only_in_sign_are_told_apart(
    log_path: Path,
) -> None:
    class Op:  # a callable descriptor: a routine without a __qualname__
        def __get__(self, obj: object, owner: object = None) -> Op:
            return self

        def __call__(self, x: int) -> int:
            return x

    @dataclasses.dataclass
    class Broken:  # a field never set, and a __getattr__ that raises KeyError
        x: int = dataclasses.field(init=False)

        def __reduce_ex__(self, protocol: object) -> object:
            raise RuntimeError("no pickle")

        def __getattr__(self, name: str) -> object:
            raise KeyError(name)  # what reading its state meets

    ran: list[object] = []

    @step
    def apply(f: object, y: float = 0.0) -> str:
        ran.append(y)
        return str(y)

    with workflow("args"):
        assert apply(Op()) == "0.0"
        assert apply(Op(), -0.0) == "-0.0"  # 1 / y would tell them apart: not the same call
        with pytest.warns(DurableWarning, match="arguments cannot be digested"):
            apply(Broken())
        apply(Broken())
    assert ran == [0.0, -0.0, 0.0, 0.0]


def test_a_record_from_before_installed_names_counted_says_the_rule_changed(
    module, log_path: Path
) -> None:
    nb = module("nb_rules3", "import math\ndef s(x):\n    return math.sqrt(x)\n")
    s = Step(nb.s)
    with workflow("rules3"):
        assert s(4) == 2.0
    conn = sqlite3.connect(log_path)
    with conn:  # as version 2 of the rules stored it: no entry for the module math names
        doc = json.loads(conn.execute("SELECT doc FROM digests").fetchone()[0])
        doc["rules"] = 2
        doc["entries"] = [e for e in doc["entries"] if not e[1].startswith("installed ")]
        conn.execute("INSERT INTO digests VALUES ('rules2', ?)", (json.dumps(doc),))
        conn.execute("UPDATE steps SET code_digest = 'rules2'")
    with workflow("rules3") as run:
        assert s(4) == 2.0
    assert run.steps_run == 1
    assert reasons(log_path, "s")[-1] == (
        "durable_nb was upgraded: which installed object nb_rules3.math is now counts "
        "(math); accept replays it since run 1"
    )
