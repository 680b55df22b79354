"""`keras-policy-ext check` as a CI job meets it: verdicts, timeouts, signals, quiet output."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import pytest

from keras_policy_ext.cli import matrix
from keras_policy_ext.cli.quiet import is_native_log

BACKEND = keras.backend.backend()
TWO = ["--backends", BACKEND, "--policies", "float32,mixed_bfloat16"]

TARGETS = textwrap.dedent(
    """
    import os, sys, time
    import keras
    import numpy as np
    import keras_policy_ext as kpe

    class KerasOnlyDrift(keras.layers.Layer):
        # Casts to float32 only under Keras's own policy: kpe conforms, Keras does not.
        def call(self, x):
            if isinstance(self.dtype_policy, kpe.DTypePolicy):
                return x * 1
            return keras.ops.cast(x, "float32")

    def keras_only():
        return KerasOnlyDrift(), np.ones((2, 3), "float32")

    def _in_bfloat16():
        return kpe.config.dtype_policy().compute_dtype == "bfloat16"

    def hangs():
        # Conforms under float32; under mixed_bfloat16 it records its pid and hangs.
        if _in_bfloat16():
            with open(os.environ["KPE_TEST_PID_FILE"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)
        return keras.layers.Dense(2), np.ones((2, 3), "float32")

    def exits():
        sys.exit(3)

    def stubborn():
        # Like hangs, and ignores SIGTERM: only SIGKILL stops it.
        if _in_bfloat16():
            import signal
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            with open(os.environ["KPE_TEST_PID_FILE"], "w") as f:
                f.write(str(os.getpid()))
            time.sleep(600)
        return keras.layers.Dense(2), np.ones((2, 3), "float32")

    def dies():
        if _in_bfloat16():
            os._exit(3)
        return keras.layers.Dense(2), np.ones((2, 3), "float32")

    def dies_at_once():
        os._exit(0)
    """
)


# Packages whose `__init__` misbehaves; each `mod` holds a good target.
PACKAGES = {
    "kpe_pkg_exit": "import sys\nsys.exit(0)\n",
    "kpe_pkg_raise": "raise RuntimeError('the package cannot start')\n",
    "kpe_pkg_print": "print('the package talks on stdout')\n",
}


@pytest.fixture
def env(tmp_path):
    (tmp_path / "kpe_run_targets.py").write_text(TARGETS)
    for package, init in PACKAGES.items():
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text(init)
        (tmp_path / package / "mod.py").write_text("from kpe_run_targets import keras_only\n")
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    env["KPE_TEST_PID_FILE"] = str(tmp_path / "child.pid")
    env["TMPDIR"] = str(tmp_path / "tmp")
    return env


def wait_until(parent, ready, never, every=0.5):
    """Polls `ready()` while the command runs; fails with `never` after 300 s, or if it ends."""
    deadline = time.monotonic() + 300
    while not ready():
        assert parent.poll() is None, parent.communicate()
        assert time.monotonic() < deadline, never
        time.sleep(every)


def hanging_child(parent, tmp_path):
    """The pid of the backend process a hanging target runs in, once it hangs."""
    pid_file = tmp_path / "child.pid"

    def written():
        return pid_file.exists() and pid_file.read_text()

    wait_until(parent, written, "the target never started hanging")
    return int(pid_file.read_text())


def cli(*args, env, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "keras_policy_ext", *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip


@pytest.mark.tools
def test_keras_findings_fail_the_run_only_when_asked(env):
    result = cli("check", "kpe_run_targets:keras_only", *TWO, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    first, kpe_line, keras_line = result.stdout.splitlines()[:3]
    assert first.startswith("CONFORMS: 4 cases on " + BACKEND)
    assert kpe_line.strip().startswith("kpe: 0 with findings")
    assert keras_line.strip().startswith(f"keras: 1 with findings ({BACKEND}: 1 with findings)")
    assert "--fail-on-keras" in keras_line
    strict = cli("check", "kpe_run_targets:keras_only", *TWO, "--fail-on-keras", env=env)
    assert strict.returncode == 1 and strict.stdout.startswith("DOES NOT CONFORM")


@pytest.mark.tools
def test_a_hung_backend_times_out_keeps_what_finished_and_reports_progress(env, tmp_path):
    report = tmp_path / "report.json"
    args = ["check", "kpe_run_targets:hangs", *TWO, "--timeout", "40", "--format", "json"]
    start = time.monotonic()
    result = cli(*args, "--output", str(report), env=env)
    assert time.monotonic() - start < 120
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.startswith("INCOMPLETE")
    data = json.loads(report.read_text())
    backend = data["backends"][BACKEND]
    assert "timed out after 40 s" in backend["error"]
    assert "mixed_bfloat16" in backend["error"]  # what it was checking
    assert "KeyboardInterrupt" not in backend["error"]  # not the stopped process's traceback
    kept = {(c["policy"], c["source"]) for c in backend["cases"]}
    assert kept == {("float32", "kpe"), ("float32", "keras")}
    # no terminal: a progress line per backend when its state changed, never the same twice
    beats = [l for l in result.stderr.splitlines() if l.startswith(f"checking {BACKEND}:")]
    states = [line.rsplit(" (", 1)[0] for line in beats]
    assert states and states[0] == f"checking {BACKEND}: starting", result.stderr
    assert len(set(states)) == len(states), result.stderr
    # quiet: no native log line reaches the terminal
    noisy = [l for l in (result.stdout + result.stderr).splitlines() if is_native_log(l)]
    assert not noisy
    assert not os.listdir(tmp_path / "tmp")  # temporary files removed


@pytest.mark.tools
def test_sigterm_stops_the_backend_processes_and_removes_temporary_files(env, tmp_path):
    command = [sys.executable, "-m", "keras_policy_ext", "check", "kpe_run_targets:hangs", *TWO]
    parent = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    child = hanging_child(parent, tmp_path)
    parent.send_signal(signal.SIGTERM)
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == 130, out + err
    assert "interrupted" in err
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert not os.listdir(tmp_path / "tmp")


@pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="needs JAX: the helper processes are JAX's"
)
@pytest.mark.skipif(matrix._cores() < 2, reason="JAX's process takes a helper only with 2+ cores")
def test_sigterm_with_a_cache_dir_stops_jax_s_helpers_and_removes_their_files(env, tmp_path):
    # JAX's process shares the zoo with a helper, through files in a temporary
    # directory; with --cache-dir too, a SIGTERM must still let it remove them.
    layers = "Dense,Conv1D,Conv2D,LSTM,GRU,SimpleRNN"
    command = [sys.executable, "-m", "keras_policy_ext", "check", "--backends", "jax",
               "--layers", layers, "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    parent = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

    def helpers_started():
        return any(n.startswith("kpe-helpers-") for n in os.listdir(tmp_path / "tmp"))

    wait_until(parent, helpers_started, "JAX's helper never started", every=0.2)
    time.sleep(1)
    parent.send_signal(signal.SIGTERM)
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == 130, out + err
    assert not os.listdir(tmp_path / "tmp")


@pytest.mark.tools
def test_a_second_interrupt_still_stops_a_backend_process_slow_to_stop(env, tmp_path):
    command = [sys.executable, "-m", "keras_policy_ext", "check", "kpe_run_targets:stubborn",
               *TWO]  # fmt: skip
    # SIGINT as a terminal's ^C reaches a command in the foreground: a process
    # that starts with SIGINT ignored (a pytest-xdist worker's child, a shell's
    # background job) keeps ignoring it, as Python does.
    parent = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    child = hanging_child(parent, tmp_path)
    parent.send_signal(signal.SIGINT)
    time.sleep(1)
    parent.send_signal(signal.SIGINT)  # while the first one waits for the child
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == 130, out + err
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


@pytest.mark.tools
def test_on_a_terminal_the_live_line_shows_a_backend_that_starts_or_hangs(env):
    import pty
    import re

    primary, terminal = pty.openpty()
    command = [sys.executable, "-m", "keras_policy_ext", "check", "kpe_run_targets:hangs",
               *TWO, "--timeout", "20"]  # fmt: skip
    parent = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal
    )
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal's other end is closed: the command ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(primary)
    parent.communicate(timeout=60)
    assert parent.returncode == 2
    text = seen.decode(errors="replace")
    seconds = set(re.findall(rf"checking: {BACKEND} [^\r]*?\((\d+) s\)", text))
    assert len(seconds) >= 5, text  # redrawn as the seconds go by, before any layer ends


@pytest.mark.tools
@pytest.mark.parametrize(
    "target, message",
    [
        ("exits", "called sys.exit(3)"),
        ("dies", "exited with status 3 before finishing"),
        ("dies_at_once", "exited with status 0 before finishing"),
    ],
)
def test_a_target_that_exits_is_reported_legibly(env, target, message):
    result = cli("check", f"kpe_run_targets:{target}", *TWO, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stdout + result.stderr
    assert f"kpe_run_targets:{target}" in result.stdout + result.stderr  # named
    assert "RuntimeWarning" not in result.stdout + result.stderr


@pytest.mark.tools
def test_role_policies_are_not_split_and_compared_with_keras_where_it_can(env):
    result = cli(
        "check", "--backends", BACKEND, "--layers", "Dense", "--all",
        "--policies", "p=f32,c=bf16", "--policy", "params=bfloat16,compute=float32",
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note: Keras cannot express 'params=bfloat16,compute=float32'" in result.stdout
    assert result.stdout.startswith("CONFORMS: 3 cases")  # keras compared on mixed_bfloat16 only
    policies = {row.split()[1] for row in result.stdout.splitlines() if row.startswith("Dense")}
    assert policies == {"mixed_bfloat16", "params=bfloat16,compute=float32"}


@pytest.mark.tools
def test_markdown_format_has_the_verdict_and_the_grid(env):
    result = cli("check", *TWO, "--layers", "Dense", "--format", "markdown", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "### keras-policy-ext check: CONFORMS"
    assert f"| layer | policy | {BACKEND} |" in lines
    assert "| Dense | mixed_bfloat16 | ok |" in lines


@pytest.mark.tools
def test_usage_errors_are_reported_before_any_backend_process_starts(env, tmp_path):
    for args, message in [
        (["--layers", "NoSuchLayer"], "no zoo layer matches NoSuchLayer"),
        (["--layers", "Dense,NoSuchLayer"], "no zoo layer matches NoSuchLayer"),
        (["--layers", ""], "--layers is empty"),
        (["--layers", " , "], "--layers is empty"),
        (["--policies", ""], "--policies is empty"),
        (["--policies", "float33"], "float33"),
        (["no_such_module_kpe_x:make"], "cannot import 'no_such_module_kpe_x'"),
        (["kpe_pkg_raise.nope:make"], "cannot import 'kpe_pkg_raise.nope'"),
        (["--timeout", "0"], "expected a number of seconds > 0"),
        (["--output", str(tmp_path / "no_dir" / "r.json")], "cannot write the report"),
        (["--output", str(tmp_path)], "cannot write the report"),
    ]:
        result = cli("check", "--backends", BACKEND, "--layers", "Dense", *args, env=env)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "checking " + BACKEND not in result.stderr  # no backend process ran
        assert "Traceback" not in result.stderr
    result = cli("check", "--backends", "", "--layers", "Dense", env=env)
    assert result.returncode == 2 and "--backends is empty" in result.stderr, result.stderr
    assert not (tmp_path / "no_dir").exists()


@pytest.mark.tools
def test_a_target_s_package_runs_only_in_the_backend_processes(env):
    # The command finds a target's module without running its package's code: an
    # `__init__` that exits, raises or prints is the target's error, in its process.
    result = cli("check", "kpe_pkg_exit.mod:keras_only", *TWO, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "kpe_pkg_exit.mod" in result.stdout + result.stderr
    assert "sys.exit(0)" in result.stdout + result.stderr
    result = cli("check", "kpe_pkg_raise.mod:keras_only", *TWO, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the package cannot start" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    result = cli("check", "kpe_pkg_print.mod:keras_only", *TWO, "--format", "json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(json.loads(result.stdout)["backends"][BACKEND]["cases"]) == 4


@pytest.mark.tools
def test_the_installed_command_finds_a_target_in_the_current_directory(env, tmp_path):
    # README: "The current directory is on the import path", as for `python -m`.
    command = os.path.join(os.path.dirname(sys.executable), "keras-policy-ext")
    if not os.path.exists(command):
        pytest.skip("keras-policy-ext is not installed next to this Python")
    env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [command, "check", "kpe_run_targets:keras_only", *TWO],
        capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("CONFORMS: 4 cases")


@pytest.mark.tools
def test_repeated_and_duplicate_options_add_up_once(env):
    result = cli(
        "check", "--backends", BACKEND, "--backends", BACKEND, "--layers", "Dense",
        "--layers", "Softmax,Dense", "--policies", "float32", "--policy", "float32",
        "--policies", "mixed_bfloat16,p=f32,c=bf16", "--all", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"CONFORMS: 8 cases on {BACKEND}"), result.stdout
    rows = [r.split()[:2] for r in result.stdout.splitlines() if r.startswith(("Dense", "Softmax"))]
    assert sorted(map(tuple, rows)) == sorted(2 * [  # kpe's table, then Keras's
        ("Dense", "float32"), ("Dense", "mixed_bfloat16"),
        ("Softmax", "float32"), ("Softmax", "mixed_bfloat16"),
    ])  # fmt: skip
