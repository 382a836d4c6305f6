"""In-env introspection for `cjm-ctl install-all` / `regenerate-manifest` /
`generate-adapter-manifest`.

Runs inside the capability's own environment and calls cjm-substrate's own manifest
writers (`cli._generate_manifest`, `cli._generate_adapter_manifest`), so the manifests are
exactly what the Python tool writes. Those writers run their introspection script with
`<conda> run -n <env> python <script>`; the conda command is pointed at this interpreter
instead (the env is a venv or a prefix here, not a named conda env).

argv[1]: a JSON request. stdout: one JSON line {"path": ...}; everything the Python tool
prints goes to stderr (the install log).
"""
import contextlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

SHIM = "import runpy, sys; p = sys.argv[-1]; sys.argv = [p]; runpy.run_path(p, run_name='__main__')"


def main():
    req = json.loads(sys.argv[1])
    with contextlib.redirect_stdout(sys.stderr):
        from cjm_substrate import cli
        from cjm_substrate.core.config import CJMConfig, set_config

        cfg = CJMConfig()
        cfg.data_dir = Path(req["data_dir"])
        if req.get("models_dir"):
            cfg.models_dir = Path(req["models_dir"])
        set_config(cfg)
        cli._get_conda_cmd_str = lambda: shlex.quote(sys.executable) + " -c " + shlex.quote(SHIM)
        out_dir = Path(req["manifests_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        if req["mode"] == "capability":
            path = cli._generate_manifest(req["env_name"], req["package"], out_dir)
            if path is None:
                print("cjm-substrate could not generate the manifest (see above)", file=sys.stderr)
                sys.exit(1)
            m = cli.load_manifest(path)
            changed = False
            if req.get("env_vars"):
                m.install.env_vars.update(req["env_vars"])
                changed = True
            if req.get("installed_at"):
                m.install.installed_at = req["installed_at"]
                changed = True
            if req.get("refreshed_at") is not None:
                m.install.refreshed_at = req["refreshed_at"]
                changed = True
            if changed:
                cli.write_manifest(path, m)
        else:
            try:
                path = cli._generate_adapter_manifest(req["env_name"], req["impl"], out_dir)
            except subprocess.CalledProcessError as e:
                print(e.stderr or e.stdout or str(e), file=sys.stderr)
                sys.exit(1)
            except ValueError as e:
                print(e, file=sys.stderr)
                sys.exit(1)
    print(json.dumps({"path": str(path)}))


main()
