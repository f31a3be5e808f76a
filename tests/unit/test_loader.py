"""pyresty.runtime.loader: one file one module, handler strings, config checks.

Tests that exercise the import system run in a fresh interpreter (the setting
a worker has), with real files under tmp_path; the script prints one JSON line
with what it saw. Handler-resolution tests run in this process, with sys.path,
sys.meta_path and sys.modules restored after each test.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from pyresty.config.model import Config, Hooks, Listen, Location, Peer, Server, Upstream
from pyresty.errors import HandlerError
from pyresty.runtime import loader

pytestmark = pytest.mark.timeout(60)

ROOT = str(Path(__file__).resolve().parents[2])
WARNING = ('module "{alias}" is the file {file} already loaded as "{first}"; '
           "using that module (import it by one name)")


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def run(script: str, env: dict[str, str] | None = None) -> tuple[Any, list[str]]:
    """Run ``script`` in a fresh interpreter; return its last stdout line (JSON) and stderr lines."""
    code = f"import sys; sys.path.append({ROOT!r})\n" + textwrap.dedent(script)
    proc = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1]), proc.stderr.splitlines()


# A module that appends its name to $EXEC_LOG each time its file is executed.
COUNTED = """\
    import os
    with open(os.environ["EXEC_LOG"], "a") as f:
        f.write(__name__ + "\\n")
    state = {}
"""


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The seed-003 tree: app/models/prestop.py, reachable as two names."""
    write(tmp_path, {
        "app/__init__.py": "",
        "app/models/__init__.py": COUNTED,
        "app/models/prestop.py": COUNTED,
    })
    return tmp_path


def executions(root: Path) -> list[str]:
    log = root / "exec.log"
    return log.read_text().splitlines() if log.exists() else []


def env_for(root: Path) -> dict[str, str]:
    return {"EXEC_LOG": str(root / "exec.log")}


# ---------------------------------------------------------------- one file, one module

def test_seed_003_long_name_first(app: Path) -> None:
    write(app, {"app/handlers.py": """\
        import app.models.prestop
        import prestop

        async def stop(r):
            prestop.state["stopping"] = True
    """})
    result, stderr = run(f"""
        import json
        from pyresty.runtime import loader
        loader.install([{str(app)!r}, {str(app / "app/models")!r}])
        import app.handlers, asyncio, sys
        asyncio.run(app.handlers.stop(None))
        import prestop, app.models.prestop
        print(json.dumps({{
            "same": prestop is app.models.prestop,
            "seen": app.models.prestop.state.get("stopping"),
            "name": prestop.__name__,
            "registered": sys.modules["prestop"] is sys.modules["app.models.prestop"],
        }}))
    """, env_for(app))
    assert result == {"same": True, "seen": True, "name": "app.models.prestop", "registered": True}
    assert executions(app) == ["app.models", "app.models.prestop"]
    file = os.path.realpath(app / "app/models/prestop.py")
    assert stderr == [WARNING.format(alias="prestop", file=file, first="app.models.prestop")]


def test_short_name_first(app: Path) -> None:
    write(app, {"app/handlers.py": "import prestop\nimport app.models.prestop\n"})
    result, stderr = run(f"""
        import json
        from pyresty.runtime import loader
        loader.install([{str(app)!r}, {str(app / "app/models")!r}])
        import app.handlers
        import prestop, app.models, app.models.prestop
        app.models.prestop.state["x"] = 1
        print(json.dumps({{
            "same": prestop is app.models.prestop,
            "attr": app.models.prestop is app.models.__dict__["prestop"],
            "x": prestop.state.get("x"),
            "spec": app.models.prestop.__spec__.name,
        }}))
    """, env_for(app))
    assert result == {"same": True, "attr": True, "x": 1, "spec": "prestop"}
    assert executions(app) == ["prestop", "app.models"]
    file = os.path.realpath(app / "app/models/prestop.py")
    assert stderr == [WARNING.format(alias="app.models.prestop", file=file, first="prestop")]


def test_from_package_import_name(app: Path) -> None:
    result, stderr = run(f"""
        import json
        from pyresty.runtime import loader
        loader.install([{str(app)!r}, {str(app / "app/models")!r}])
        import prestop
        from app.models import prestop as other
        print(json.dumps(prestop is other))
    """, env_for(app))
    assert result is True
    assert executions(app) == ["prestop", "app.models"]
    assert len(stderr) == 1


def test_relative_import_reaches_the_module_loaded_first(app: Path) -> None:
    write(app, {"app/models/user.py": "from . import prestop\nfrom .prestop import state\n"})
    result, stderr = run(f"""
        import json
        from pyresty.runtime import loader
        loader.install([{str(app)!r}, {str(app / "app/models")!r}])
        import prestop
        import app.models.user as user
        print(json.dumps([user.prestop is prestop, user.state is prestop.state]))
    """, env_for(app))
    assert result == [True, True]
    assert executions(app).count("prestop") == 1 and len(executions(app)) == 2
    assert len(stderr) == 1


def test_package_init_under_two_names(app: Path) -> None:
    result, stderr = run(f"""
        import json
        from pyresty.runtime import loader
        loader.install([{str(app)!r}, {str(app / "app")!r}])
        import app.models, models
        import models.prestop, app.models.prestop
        print(json.dumps([models is app.models, models.prestop is app.models.prestop,
                          models.__path__ == app.models.__path__]))
    """, env_for(app))
    assert result == [True, True, True]
    assert executions(app) == ["app.models", "models.prestop"]
    init = os.path.realpath(app / "app/models/__init__.py")
    prestop = os.path.realpath(app / "app/models/prestop.py")
    assert stderr == [
        WARNING.format(alias="models", file=init, first="app.models"),
        WARNING.format(alias="app.models.prestop", file=prestop, first="models.prestop"),
    ]


def test_namespace_packages_left_alone(tmp_path: Path) -> None:
    write(tmp_path, {"one/ns/a.py": "A = 1\n", "two/ns/b.py": "B = 2\n"})
    result, stderr = run(f"""
        import json
        from pyresty.runtime import loader
        loader.install([{str(tmp_path / "one")!r}, {str(tmp_path / "two")!r}])
        import ns, ns.a, ns.b
        print(json.dumps([ns.__spec__.origin, sorted(ns.__path__), ns.a.A, ns.b.B]))
    """)
    assert result == [None, sorted([str(tmp_path / "one/ns"), str(tmp_path / "two/ns")]), 1, 2]
    assert stderr == []


def test_reload_keeps_identity_and_executes_once(app: Path) -> None:
    result, stderr = run(f"""
        import importlib, json, sys
        from pyresty.runtime import loader
        loader.install([{str(app)!r}, {str(app / "app/models")!r}])
        import app.models.prestop as first, prestop as alias
        reloaded = importlib.reload(alias)
        again = importlib.reload(first)
        print(json.dumps([reloaded is first, again is first, alias is first,
                          sys.modules["prestop"] is first, first.__spec__.name]))
    """, env_for(app))
    assert result == [True, True, True, True, "app.models.prestop"]
    assert executions(app) == ["app.models"] + ["app.models.prestop"] * 3
    assert len(stderr) == 1                     # the alias, not the reloads


def test_failed_import_is_not_aliased(app: Path) -> None:
    write(app, {"app/models/flaky.py": """\
        import os
        with open(os.environ["EXEC_LOG"], "a") as f:
            f.write(__name__ + "\\n")
        if not os.path.exists(os.environ["EXEC_LOG"] + ".ok"):
            raise RuntimeError("not yet")
    """})
    result, stderr = run(f"""
        import json, os
        from pyresty.runtime import loader
        loader.install([{str(app)!r}, {str(app / "app/models")!r}])
        try:
            import app.models.flaky
        except RuntimeError:
            pass
        open(os.environ["EXEC_LOG"] + ".ok", "w").close()
        import flaky
        print(json.dumps(flaky.__name__))
    """, env_for(app))
    assert result == "flaky"
    assert executions(app) == ["app.models", "app.models.flaky", "flaky"]
    assert stderr == []


def test_modules_imported_before_install_are_recorded(app: Path) -> None:
    result, stderr = run(f"""
        import json, sys
        sys.path.insert(0, {str(app)!r})
        import app.models.prestop
        from pyresty.runtime import loader
        loader.install([{str(app / "app/models")!r}])
        import prestop
        print(json.dumps(prestop is app.models.prestop))
    """, env_for(app))
    assert result is True
    assert len(stderr) == 1


def test_symlinked_folder_is_the_same_file(app: Path) -> None:
    os.symlink(app / "app/models", app / "linked")
    result, stderr = run(f"""
        import json
        from pyresty.runtime import loader
        loader.install([{str(app)!r}, {str(app / "linked")!r}])
        import app.models.prestop, prestop
        print(json.dumps([prestop is app.models.prestop, prestop.__file__]))
    """, env_for(app))
    assert result == [True, str(app / "app/models/prestop.py")]
    assert stderr == [WARNING.format(alias="prestop", first="app.models.prestop",
                                     file=os.path.realpath(app / "app/models/prestop.py"))]


def test_find_spec_alone_logs_nothing_and_frozen_modules_stay_frozen(app: Path) -> None:
    result, stderr = run(f"""
        import importlib.util, json
        from pyresty.runtime import loader
        loader.install([{str(app)!r}, {str(app / "app/models")!r}])
        import app.models.prestop
        spec = importlib.util.find_spec("prestop")
        import __hello__, json.decoder
        print(json.dumps([spec.name, __hello__.__spec__.origin, json.decoder.__spec__.origin]))
    """, env_for(app))
    assert result[:2] == ["prestop", "frozen"] and result[2].endswith("json/decoder.py")
    assert stderr == []


def test_install_is_idempotent_and_uninstall_undoes_it(app: Path) -> None:
    result, _ = run(f"""
        import json, sys
        from pyresty.runtime import loader
        before = list(sys.path)
        paths = [{str(app)!r}, {str(app / "app/models")!r}]
        loader.install(paths)
        loader.install(paths)
        finders = sum(isinstance(f, loader.OneFileFinder) for f in sys.meta_path)
        head = sys.path[:2]
        first = isinstance(sys.meta_path[0], loader.OneFileFinder)
        loader.uninstall()
        import prestop, app.models.prestop       # without the finder: two copies
        print(json.dumps([finders, first, head == paths, sys.path == before,
                          prestop is app.models.prestop]))
    """, {**env_for(app), "PYTHONPATH": f"{app}:{app / 'app/models'}"})
    assert result == [1, True, True, True, False]
    assert executions(app) == ["prestop", "app.models", "app.models.prestop"]


# ---------------------------------------------------------------- resolve

HELLO = """\
    VALUE = 3

    async def hello(r):
        pass

    def plain(r):
        pass

    class Handler:
        @staticmethod
        async def get(r):
            pass

    class Async:
        async def __call__(self, r):
            pass

    class Sync:
        def __call__(self, r):
            pass

    obj = Async()
    sobj = Sync()
"""


@pytest.fixture
def code(tmp_path: Path) -> Any:
    """tmp_path installed as code_path; imports are undone afterwards."""
    saved_path, saved_meta, saved_modules = list(sys.path), list(sys.meta_path), set(sys.modules)
    write(tmp_path, {"hello.py": HELLO, "app/__init__.py": "",
                     "boom.py": "x = 1\ny = 1 / 0\n",
                     "bad.py": "def f():\n    return 1\nx = = 2\n",
                     "needsdep.py": "import nosuchdep_q\n",
                     "exits.py": "import sys\nsys.exit(3)\n"})
    loader.install([str(tmp_path)])
    yield tmp_path
    loader.uninstall()
    sys.path[:], sys.meta_path[:] = saved_path, saved_meta
    for name in set(sys.modules) - saved_modules:
        del sys.modules[name]


@pytest.mark.parametrize("handler, phase, reason", [
    ("nosuchmod_q:f", None,
     "cannot import \"nosuchmod_q:f\": No module named 'nosuchmod_q' (searched code_path: {tmp})"),
    ("app.nothere:f", "content",
     "cannot import \"app.nothere:f\": No module named 'app.nothere' (searched code_path: {tmp})"),
    ("boom:f", None,
     'cannot import "boom:f": ZeroDivisionError: division by zero (at {tmp}/boom.py:2)'),
    ("bad:f", None, 'cannot import "bad:f": SyntaxError: invalid syntax (at {tmp}/bad.py:3)'),
    ("needsdep:f", None,
     "cannot import \"needsdep:f\": ModuleNotFoundError: No module named 'nosuchdep_q'"
     " (at {tmp}/needsdep.py:1)"),
    ("exits:f", None, 'cannot import "exits:f": SystemExit: 3 (at {tmp}/exits.py:2)'),
    ("hello:helo", "content",
     "cannot use \"hello:helo\": module hello has no attribute 'helo' (did you mean 'hello'?)"),
    ("hello:zzz", None, "cannot use \"hello:zzz\": module hello has no attribute 'zzz'"),
    ("hello:Handler.gett", "content",
     "cannot use \"hello:Handler.gett\": hello:Handler has no attribute 'gett' (did you mean 'get'?)"),
    ("hello:VALUE", None, "cannot use \"hello:VALUE\": 'int' object is not callable"),
    ("hello:plain", "content",
     'cannot use "hello:plain": content must be async def, not a plain function'),
    ("hello:sobj", "access",
     'cannot use "hello:sobj": access must be async def, not a plain function'),
    ("hello:Async", "balancer",
     'cannot use "hello:Async": balancer must be async def, not a plain function'),
    ("hello:hello", "header_filter",
     'cannot use "hello:hello": header_filter must be a plain function, not async def'),
    ("hello:obj", "body_filter",
     'cannot use "hello:obj": body_filter must be a plain function, not async def'),
    ("hello", None, 'invalid handler "hello" (expected "package.module:function")'),
    ("hello:", None, 'invalid handler "hello:" (expected "package.module:function")'),
    (":hello", None, 'invalid handler ":hello" (expected "package.module:function")'),
    ("hello:a:b", None, 'invalid handler "hello:a:b" (expected "package.module:function")'),
    ("a..b:f", None, 'invalid handler "a..b:f" (expected "package.module:function")'),
    ("hel lo:f", None, 'invalid handler "hel lo:f" (expected "package.module:function")'),
])
def test_resolve_errors(code: Path, handler: str, phase: str | None, reason: str) -> None:
    with pytest.raises(HandlerError) as caught:
        loader.resolve(handler, phase=phase)
    assert str(caught.value) == reason.format(tmp=code)


@pytest.mark.parametrize("handler, phase", [
    ("hello:hello", "content"), ("hello:obj", "access"), ("hello:Handler.get", "rewrite"),
    ("hello:hello", "balancer"), ("hello:plain", "header_filter"), ("hello:sobj", "body_filter"),
    ("hello:plain", "log"), ("hello:hello", "log"), ("hello:plain", "init_worker"),
    ("hello:hello", "exit_worker"), ("hello:VALUE.__add__", None),
])
def test_resolve_accepts(code: Path, handler: str, phase: str | None) -> None:
    module, _, attrs = handler.partition(":")
    expected: Any = sys.modules.get(module) or __import__(module)
    for attr in attrs.split("."):
        expected = getattr(expected, attr)
    assert loader.resolve(handler, phase=phase) == expected


def test_resolve_unknown_phase(code: Path) -> None:
    with pytest.raises(ValueError):
        loader.resolve("hello:hello", phase="contents")


def test_check_config_names_file_and_key(code: Path) -> None:
    config = Config(
        path="pyresty.toml", prefix=str(code), code_path=(str(code),),
        hooks=Hooks(init_worker="hello:plain", exit_worker="hello:nothere"),
        upstreams=(Upstream("api", (Peer("127.0.0.1", 1),), balancer="hello:plain"),),
        servers=(Server(listen=(Listen("127.0.0.1", 0),), key="server[0]", locations=(
            Location("", "/", content="hello:hello", key="server[0].location[0]"),
            Location("", "/x", content="app.hello:hello", header_filter="hello:hello",
                     key="server[0].location[1]"),
        )),),
    )
    assert loader.check_config(config) == [
        "pyresty.toml: hooks.exit_worker: cannot use \"hello:nothere\": "
        "module hello has no attribute 'nothere'",
        'pyresty.toml: upstream.api.balancer: cannot use "hello:plain": '
        "balancer must be async def, not a plain function",
        "pyresty.toml: server[0].location[1].content: cannot import \"app.hello:hello\": "
        f"No module named 'app.hello' (searched code_path: {code})",
        'pyresty.toml: server[0].location[1].header_filter: cannot use "hello:hello": '
        "header_filter must be a plain function, not async def",
    ]


# ---------------------------------------------------------------- check in a child

FACTORY = """\
    import json
    from pyresty.config.model import Config, Listen, Location, Server
    from pyresty.errors import ConfigError

    def load(path, prefix):
        with open(path) as f:
            spec = json.load(f)
        if "problems" in spec:
            raise ConfigError(spec["problems"])
        if "explode" in spec:
            raise KeyError(spec["explode"])
        locations = tuple(Location("", f"/{i}", content=h, key=f"server[0].location[{i}]")
                          for i, h in enumerate(spec["content"]))
        server = Server(listen=(Listen("127.0.0.1", 0),), locations=locations, key="server[0]")
        return Config(path=path, prefix=prefix or ".", code_path=tuple(spec["code_path"]),
                      servers=(server,))
"""


@pytest.fixture
def child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """check_config_in_child with a test loader: config JSON in, problem lines out."""
    write(tmp_path, {"factory/testcfg.py": FACTORY, "code/hello.py": HELLO})
    # the check runs in a fork of this process: the test loader is found on its sys.path
    monkeypatch.syspath_prepend(str(tmp_path / "factory"))

    def check(spec: dict[str, Any], timeout: float = 30.0) -> list[str]:
        path = tmp_path / "pyresty.json"
        path.write_text(json.dumps({"code_path": [str(tmp_path / "code")], **spec}))
        return loader.check_config_in_child(str(path), str(tmp_path), timeout=timeout,
                                            load="testcfg:load")
    check.root = tmp_path  # type: ignore[attr-defined]
    return check


def test_child_good_config(child: Any) -> None:
    write(child.root, {"code/noisy.py": """\
        import os, sys
        print("hello on stdout"); print("and stderr", file=sys.stderr)
        os.write(1, b"raw fd 1\\n")
        async def handler(r):
            pass
    """})
    assert child({"content": ["hello:hello", "noisy:handler"]}) == []
    assert "hello" not in sys.modules                    # nothing imported here


def test_child_bad_handlers(child: Any) -> None:
    cfg = child.root / "pyresty.json"
    assert child({"content": ["hello:hello", "hello:helo", "gone:f"]}) == [
        f"{cfg}: server[0].location[1].content: cannot use \"hello:helo\": "
        "module hello has no attribute 'helo' (did you mean 'hello'?)",
        f"{cfg}: server[0].location[2].content: cannot import \"gone:f\": "
        f"No module named 'gone' (searched code_path: {child.root / 'code'})",
    ]


def test_child_config_errors(child: Any) -> None:
    problems = ["pyresty.toml: workers: invalid value -1 (expected an integer >= 0)"]
    assert child({"problems": problems}) == problems
    assert child({"explode": "boom"}) == [
        f"{child.root / 'pyresty.json'}: cannot load the config: KeyError: 'boom' "
        f"(at {child.root / 'factory/testcfg.py'}:11)"
    ]


def test_child_hang_is_killed_with_its_group(child: Any) -> None:
    grandchild_pid = child.root / "grandchild.pid"
    write(child.root, {"code/slow.py": f"""\
        import subprocess, time
        proc = subprocess.Popen(["sleep", "60"])
        open({str(grandchild_pid)!r}, "w").write(str(proc.pid))
        time.sleep(60)
    """})
    started = time.monotonic()
    problems = child({"content": ["hello:hello", "slow:handler"]}, timeout=2.0)
    assert time.monotonic() - started < 10
    assert problems == [f'{child.root / "pyresty.json"}: server[0].location[1].content: '
                        'importing "slow:handler" did not finish within 2 s']
    assert_gone(int(grandchild_pid.read_text()))


def test_child_crash_names_the_handler(child: Any) -> None:
    write(child.root, {"code/crash.py": "import os, sys\nprint('dying', file=sys.stderr)\nos._exit(7)\n",
                       "code/killed.py": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"})
    cfg = child.root / "pyresty.json"
    assert child({"content": ["crash:handler"]}) == [
        f'{cfg}: server[0].location[0].content: importing "crash:handler" exited with status 7: dying'
    ]
    assert child({"content": ["hello:hello", "killed:handler"]}) == [
        f'{cfg}: server[0].location[1].content: importing "killed:handler" was killed by SIGKILL'
    ]


def assert_gone(pid: int, deadline: float = 5.0) -> None:
    """The process is gone or a zombie waiting for its reaper, within ``deadline`` s."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} survived the check")


def test_child_with_the_real_config_loader(tmp_path: Path) -> None:
    write(tmp_path, {"code/hello.py": HELLO, "pyresty.toml": """\
        code_path = ["code"]
        workers = -1
        [[server]]
        listen = "127.0.0.1:8080"
        [[server.location]]
        path = "/"
        content = "hello:helo"
    """})
    config = str(tmp_path / "pyresty.toml")
    problems = loader.check_config_in_child(config)
    assert len(problems) == 1 and problems[0].startswith(f"{config}: workers: ")
    text = (tmp_path / "pyresty.toml").read_text().replace("workers = -1\n", "")
    (tmp_path / "pyresty.toml").write_text(text)
    assert loader.check_config_in_child(config) == [
        f"{config}: server[0].location[0].content: cannot use \"hello:helo\": "
        "module hello has no attribute 'helo' (did you mean 'hello'?)"
    ]
