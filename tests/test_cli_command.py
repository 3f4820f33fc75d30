"""hlrs_tf.runtime.cli.Command, the plumbing every ``python -m hlrs_tf.<command>`` shares (in process)."""

import pytest

from hlrs_tf.runtime import cli


class Lazy(Exception):
    pass


def run_main(command, argv=("prog",)):
    with pytest.raises(SystemExit) as e:
        command.main(list(argv))
    return e.value.code


def test_bad_input_is_one_line_and_status_2(capsys):
    def body():
        raise ValueError("--flag=3 is invalid:\n  it must be\tone of a, b")

    assert run_main(cli.Command("hlrs_tf.x", body)) == 2
    assert capsys.readouterr().err == "hlrs_tf.x: error: --flag=3 is invalid: it must be one of a, b\n"


def test_positional_arguments_are_refused_before_the_body_runs(capsys):
    ran = []
    assert run_main(cli.Command("hlrs_tf.x", lambda: ran.append(1)), ["prog", "stray"]) == 2
    assert not ran and "unexpected arguments ['stray']" in capsys.readouterr().err


def test_lazy_errors_are_looked_up_only_when_the_body_raises(capsys):
    looked_up = []

    def lazy():
        looked_up.append(1)
        return (Lazy,)

    command = cli.Command("hlrs_tf.x", lambda: None, lazy_errors=lazy)
    command.main(["prog"])
    assert not looked_up

    def body():
        raise Lazy("no such dataset")

    assert run_main(cli.Command("hlrs_tf.x", body, lazy_errors=lazy)) == 2
    assert looked_up and "hlrs_tf.x: error: no such dataset" in capsys.readouterr().err


def test_other_exceptions_are_bugs_and_propagate():
    def body():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli.Command("hlrs_tf.x", body).main(["prog"])
    with pytest.raises(ValueError):  # a command that reports its own errors (compare) lets ValueError through
        cli.Command("hlrs_tf.x", lambda: (_ for _ in ()).throw(ValueError("bug")), errors=()).main(["prog"])


def test_fail_in_the_body_keeps_its_status(capsys):
    command = cli.Command("hlrs_tf.x", lambda: command.fail("parity failed", status=1))
    assert run_main(command) == 1
    assert capsys.readouterr().err == "hlrs_tf.x: error: parity failed\n"
