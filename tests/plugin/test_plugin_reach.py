"""Faults reach the test's daemon with no ``daemon=`` argument, and a fault that was asked for
and never fired is reported: per test as a warning, per run-wide site in the summary.

The suites run in process (pytester); those that start the plugin's ``daemon`` fixture take
real time for the daemon's start, and say so in their names.
"""

from __future__ import annotations

import importlib
import importlib.util

import pytest

import faults  # noqa: F401 - loaded once here, so that pytester's runs do not reload it
import pytest_resilience.plugin.fixtures  # noqa: F401 - ditto

pytest_plugins = ["pytester"]

# pytester unloads what its runs import; a client imported afresh would no longer know its
# own transport's exceptions. Load them here, once.
for _name in (
    "numpy",
    "gguf",
    "llama_cpp",
    "llama_cpp.server",
    "httpcore",
    "httpx",
    "httpcore2",  # httpx2 imports it only when its first client is made
    "httpx2",
    "openai",
):
    if importlib.util.find_spec(_name.partition(".")[0]) is not None:
        importlib.import_module(_name)

INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nasyncio_mode = strict\n"

OPENAI_APP = """
import openai


def ask(base_url, model):
    with openai.OpenAI(base_url=base_url + "/v1", api_key="local", max_retries=0) as client:
        answer = client.completions.create(model=model, prompt="Hi", max_tokens=4)
    return answer.choices[0].text
"""


@pytest.fixture
def ptr(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makepyfile(
        target="def answer():\n    return 'ok'\n\ndef unused():\n    return 'ok'\n",
        app=OPENAI_APP,
    )
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:hypothesispytest", "-p", "no:cacheprovider", *args)


def test_openai_through_httpx2_meets_the_faults_with_and_without_daemon_real_time(
    ptr: pytest.Pytester,
) -> None:
    pytest.importorskip("openai")
    pytest.importorskip("llama_cpp.server")
    ptr.makepyfile(
        test_app="""
        import openai
        import pytest

        import app


        def test_refused_without_the_daemon_argument(daemon, faults):
            injector = faults("daemon.request=1*refuse")
            with pytest.raises(openai.APIConnectionError):
                app.ask(daemon.base_url, daemon.alias)
            assert injector.injected("daemon.request") == 1
            assert app.ask(daemon.base_url, daemon.alias)


        def test_refused_with_the_daemon_argument(daemon, faults):
            injector = faults("daemon.request=1*refuse", daemon=daemon)
            with pytest.raises(openai.APIConnectionError):
                app.ask(daemon.base_url, daemon.alias)
            assert injector.injected("daemon.request") == 1


        def test_the_process_is_lost_without_the_daemon_argument(daemon, faults):
            injector = faults("daemon.process=1*lost")
            with pytest.raises(openai.APIConnectionError):
                app.ask(daemon.base_url, daemon.alias)
            assert injector.injected("daemon.process") == 1
            assert not daemon.alive


        def test_a_503_is_openais_own_error(daemon, faults):
            faults("daemon.request=1*status(503)")
            with pytest.raises(openai.InternalServerError) as caught:
                app.ask(daemon.base_url, daemon.alias)
            assert caught.value.status_code == 503
            assert "fault injected at daemon.request" in caught.value.message
        """
    )
    result = run(ptr, "-W", "error")
    result.assert_outcomes(passed=4)


def test_openais_own_retry_waits_on_the_virtual_clock_real_time(ptr: pytest.Pytester) -> None:
    pytest.importorskip("openai")
    pytest.importorskip("llama_cpp.server")
    ptr.makepyfile(
        test_backoff="""
        import openai
        import pytest


        @pytest.mark.virtual_time
        def test_retry_after_is_honoured_in_virtual_time(daemon, faults, clock):
            injector = faults("daemon.request=1*ratelimit(retry_after=30s)")
            url = daemon.base_url + "/v1"
            with openai.OpenAI(base_url=url, api_key="local", max_retries=1) as client:
                client.completions.create(model=daemon.alias, prompt="Hi", max_tokens=4)
            assert injector.injected("daemon.request") == 1
            assert clock.now() == 30.0  # openai slept its Retry-After on the test's clock
        """
    )
    run(ptr, "-W", "error").assert_outcomes(passed=1)


def test_run_wide_daemon_faults_act_on_tests_with_a_daemon_only_real_time(
    ptr: pytest.Pytester,
) -> None:
    pytest.importorskip("openai")
    pytest.importorskip("llama_cpp.server")
    ptr.makepyfile(
        test_app="""
        import openai
        import pytest

        import app


        def test_with_a_daemon(daemon):
            with pytest.raises(openai.RateLimitError) as caught:
                app.ask(daemon.base_url, daemon.alias)
            assert caught.value.response.headers["retry-after"] == "7"


        def test_without_a_daemon():
            assert True
        """
    )
    result = run(
        ptr, "-W", "error", "--inject-faults", "daemon.request=1*ratelimit(retry_after=7s)"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*run-wide sites*", "*daemon.request*1 of 2 tests, 1 faults*"])


def test_a_run_wide_process_fault_leaves_tests_without_a_daemon_alone(
    ptr: pytest.Pytester,
) -> None:
    ptr.makepyfile(
        test_plain="""
        import target

        def test_one():
            assert target.answer() == "ok"

        def test_two():
            assert target.answer() == "ok"
        """
    )
    result = run(ptr, "-W", "error", "--inject-faults", "daemon.process=lost")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["*daemon.process*0 of 2 tests, 0 faults (never reached: *has no daemon to act on*"]
    )


def test_a_fixture_fault_that_never_fires_warns_and_fails_under_w_error(
    ptr: pytest.Pytester,
) -> None:
    ptr.makepyfile(
        test_unreached="""
        import target

        def test_calls_something_else(faults):
            faults("py:target:unused=1*raise(ValueError)")
            assert target.answer() == "ok"

        def test_meets_its_fault(faults):
            faults("py:target:answer=1*raise(ValueError)")
            try:
                target.answer()
            except ValueError:
                pass
        """
    )
    result = run(ptr, "-W", "always::faults.FaultNotReached")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        ["*FaultNotReached: a fault asked for never fired: py:target:unused*never called*"]
    )
    strict = run(ptr, "-W", "error::faults.FaultNotReached")
    strict.assert_outcomes(passed=1, failed=1)
    strict.stdout.fnmatch_lines(["*test_calls_something_else*FaultNotReached*"])


def test_a_marker_fault_that_never_fires_warns_but_a_run_wide_one_does_not(
    ptr: pytest.Pytester,
) -> None:
    ptr.makepyfile(
        test_marked="""
        import pytest
        import target

        @pytest.mark.faults("py:target:unused=@1raise(ValueError)")
        def test_marked():
            assert target.answer() == "ok"

        def test_plain():
            assert target.answer() == "ok"
        """
    )
    result = run(
        ptr,
        "-W",
        "always::faults.FaultNotReached",
        "--inject-faults",
        "py:target:answer=@5raise(ValueError)",
    )
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*py:target:unused*never called*"])
    result.stdout.fnmatch_lines(["*py:target:answer*2 of 2 tests, 0 faults*"])


def test_a_probabilistic_fault_that_never_fires_is_not_a_warning(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_chance="""
        import target

        def test_chance(faults):
            faults("py:target:unused=50%raise(ValueError)")
            assert target.answer() == "ok"
        """
    )
    run(ptr, "-W", "error").assert_outcomes(passed=1)


def test_a_failing_test_lists_its_unreached_faults_in_its_report(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_failing="""
        def test_fails(faults):
            faults("py:target:unused=1*raise(ValueError)")
            assert False
        """
    )
    result = run(ptr, "-W", "error")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*resilience: faults asked for that never fired*", "*py:target:unused*never called*"]
    )


@pytest.mark.parametrize(
    ("spec", "problem", "caret"),
    [
        ("py:nosuch.module:f=raise(ValueError)", "cannot import 'nosuch.module'", "   ^"),
        ("py:target:missing=raise(ValueError)", "has no attribute 'missing'", "          ^"),
    ],
)
def test_a_py_site_that_does_not_exist_is_a_usage_error(
    ptr: pytest.Pytester, spec: str, problem: str, caret: str
) -> None:
    ptr.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = run(ptr, "--inject-faults", spec)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--inject-faults: *{problem}*", f"  {spec}", f"  {caret}"])


def test_a_marker_naming_a_missing_py_site_is_a_usage_error(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(
        test_marked="""
        import pytest

        @pytest.mark.faults("py:target:nope=raise(ValueError)")
        def test_marked():
            pass
        """
    )
    result = run(ptr)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*@pytest.mark.faults on test_marked.py::test_marked*nope*"])


def test_a_bad_daemon_url_is_a_usage_error(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = run(ptr, "--daemon-url", "localhost:8080")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--daemon-url: not an http(s) URL with a host: 'localhost:8080'*"]
    )


def test_the_daemon_url_names_the_apps_own_server(ptr: pytest.Pytester) -> None:
    pytest.importorskip("httpx")
    ptr.makepyfile(
        test_own="""
        import httpx
        import pytest

        def test_refused(faults):
            injector = faults("daemon.request=1*refuse")
            with pytest.raises(httpx.ConnectError):
                httpx.get("http://127.0.0.1:9/v1/models")
            assert injector.injected("daemon.request") == 1
        """
    )
    run(ptr, "-W", "error", "--daemon-url", "http://localhost:9").assert_outcomes(passed=1)


WIRE_SUITE = """
import http.client
import json

import pytest


def post(base_url):
    # http.client: a client no hook knows, as another language or process would be
    host, _, port = base_url.removeprefix("http://").partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        body = json.dumps({"prompt": "Hi", "max_tokens": 4})
        conn.request("POST", "/v1/completions", body, {"content-type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


def test_through_the_proxy(daemon, faults):
    assert daemon.base_url != daemon.server_url  # the proxy stands in front
    injector = faults("daemon.request=1*status(503)")
    status, body = post(daemon.base_url)
    assert status == 503 and body["error"]["type"] == "server_error"
    assert post(daemon.base_url)[0] == 200
    assert injector.injected("daemon.request") == 1
"""


def test_the_daemon_route_wire_reaches_a_client_no_hook_knows_real_time(
    ptr: pytest.Pytester,
) -> None:
    pytest.importorskip("llama_cpp.server")
    ptr.makepyfile(test_wire=WIRE_SUITE)
    run(ptr, "-W", "error", "--daemon-route", "wire").assert_outcomes(passed=1)
    # and run-wide: the same fault from --inject-faults, through the proxy
    ptr.makepyfile(
        test_wire=WIRE_SUITE.replace(
            'injector = faults("daemon.request=1*status(503)")', "injector = None"
        ).replace('    assert injector.injected("daemon.request") == 1\n', "")
    )
    result = run(
        ptr,
        "-W",
        "error",
        "--daemon-route",
        "wire",
        "--inject-faults",
        "daemon.request=1*status(503)",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*daemon.request*1 of 1 tests, 1 faults*"])


def test_the_faults_marker_selects_the_wire_route_for_one_test_real_time(
    ptr: pytest.Pytester,
) -> None:
    pytest.importorskip("llama_cpp.server")
    ptr.makepyfile(
        test_wire=WIRE_SUITE.replace(
            "def test_through_the_proxy",
            '@pytest.mark.faults(route="wire")\ndef test_through_the_proxy',
        )
        + """

def test_hooks_by_default(daemon):
    assert daemon.base_url == daemon.server_url
"""
    )
    run(ptr, "-W", "error").assert_outcomes(passed=2)


def test_a_bad_route_is_a_usage_error(ptr: pytest.Pytester) -> None:
    ptr.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = run(ptr, "--daemon-route", "cable")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--daemon-route: expected hooks or wire, not 'cable'"])
