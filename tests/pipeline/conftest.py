import pytest


@pytest.fixture(scope="session")
def readme_demo(tmp_path_factory):
    """The README's first command, ``mmx demo`` (readme_steps.DEMO, on a sliver of the set), run once
    per session in the folder where the README walkthrough (test_readme_commands.py) goes on;
    test_demo.py checks what it wrote. Returns (folder, outcome, what run_demo returned)."""
    from readme_steps import DEMO, Workspace, run_step, users_folder

    from mmx.pipeline.demo import run as demo_run

    root = tmp_path_factory.mktemp("readme")
    real, returned = demo_run.run_demo, {}

    def recording(*args, **kwargs):
        returned["result"] = real(*args, **kwargs)
        return returned["result"]

    with users_folder(root) as mp:
        mp.setattr(demo_run, "run_demo", recording)
        outcome = run_step(DEMO, Workspace(root))
    return root, outcome, returned.get("result")


@pytest.fixture(scope="session")
def trained_space(tmp_path_factory):
    """Two runs (joint, eao) trained on a small real-media cache (trained_space.py), built once per session."""
    from trained_space import build

    return build(tmp_path_factory.mktemp("space"))
