"""Ctrl-C always ends a driver: the watchdog that exits within the grace period when Ray hangs."""

import subprocess
import sys


def test_a_driver_stuck_after_ctrl_c_exits_130_with_its_one_line():
    code = ("import time\n"
            "from dmltune.interruption import exit_if_stuck\n"
            "exit_if_stuck('interrupted during arm \\'a\\'', seconds=0.5)\n"
            "time.sleep(60)  # a hung ray.shutdown\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 130
    assert done.stderr == "dmltune: interrupted during arm 'a'\n"


def test_the_line_is_printed_once_whoever_comes_first(capsys):
    from dmltune import interruption

    interruption._reported = False
    try:
        interruption.report_interruption("interrupted")
        interruption.report_interruption("interrupted")
        assert capsys.readouterr().err == "dmltune: interrupted\n"
    finally:
        interruption._reported = False
