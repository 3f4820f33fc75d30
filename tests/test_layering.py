"""The package's layering: which stage may import which, checked in fresh processes.

Issue 17: the retraining and the export do not import the search stack (the BBN mixing maths they share with
the search is :mod:`hlrs_tf.losses.bbn_mixing`), and the pure maths modules the configuration reads its allowed
values from import no tensor library.
"""

import json
import subprocess
import sys

import pytest

# The search modules the retraining and the export may load: the package itself and the HLRS schedule names the
# configuration validates --arch_lr_schedule against (plain Python, checked below).
_ALLOWED_SEARCH_MODULES = {"hlrs_tf.search", "hlrs_tf.search.schedules"}


@pytest.mark.parametrize("modules", [
    ("hlrs_tf.train.task", "hlrs_tf.train.rebalancing"),
    ("hlrs_tf.export.savedmodel_onnx",),
    ("hlrs_tf.space.derived_network", "hlrs_tf.train.model", "hlrs_tf.train.callbacks"),
], ids=["train", "export", "derived_network"])
def test_retraining_and_export_do_not_import_the_search_stack(modules, child_env):
    code = (
        "import json, sys\n"
        f"for name in {modules!r}:\n"
        "    __import__(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('hlrs_tf.search'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, env=child_env, capture_output=True, text=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert loaded <= _ALLOWED_SEARCH_MODULES, sorted(loaded - _ALLOWED_SEARCH_MODULES)


def test_mixing_and_schedule_maths_import_no_tensor_library(child_env):
    code = (
        "import sys\n"
        "import hlrs_tf.losses.bbn_mixing, hlrs_tf.search.schedules, hlrs_tf.runtime.workdir\n"
        "from hlrs_tf.losses.bbn_mixing import mixing_factor\n"
        "from hlrs_tf.search.schedules import arch_learning_rate\n"
        "assert mixing_factor('parabolic', 1, 2) == 0.75 and arch_learning_rate('mixing', 1, 2, 1.0) == 0.75\n"
        "bad = [m for m in ('tensorflow', 'keras', 'absl') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env)


@pytest.mark.parametrize("command", ["search", "train", "export", "compare", "tune", "post_hoc"])
def test_commands_define_their_flags_without_tensorflow(command, child_env):
    """A command module defines its flags without importing TensorFlow, so that ``cli.Command.run`` sets the
    process up (oneDNN, log level, malloc arenas: read by TensorFlow once, at import) before the body imports it;
    and the configuration it builds imports no TensorFlow either."""
    code = (
        "import sys\n"
        f"import hlrs_tf.{command}.__main__ as m\n"
        "import hlrs_tf.config.search, hlrs_tf.config.train, hlrs_tf.config.post_hoc, hlrs_tf.config.choices\n"
        "assert callable(m.run) and m.COMMAND.prog == m.PROG\n"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env)
