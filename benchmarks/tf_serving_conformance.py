"""TF Serving's own integration test, run against the embedded server.

    python benchmarks/tf_serving_conformance.py --serving_repo PATH [--ref 2.15.1] [--keep]

PATH is a clone of github.com/tensorflow/serving (a work tree or a bare git dir). The test
(`tensorflow_serving/model_servers/tensorflow_model_server_test.py`, its `test_util` base and
`servables/tensorflow/testdata`, as shipped) is taken from `--ref` into a temporary directory,
nothing of it is copied into this project, and it runs with `tensorflow_model_server` being a
stand-in that execs `python -m serving.model_server` with exactly the arguments it gets.
Every test runs but those for TF Lite, the profiler and tf_text, which the embedded server
does not offer. Prints JSON: the count and each test's outcome.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_FILE = "tensorflow_serving/model_servers/tensorflow_model_server_test.py"
NEEDED = (TEST_FILE, "tensorflow_serving/model_servers/test_util",
          "tensorflow_serving/servables/tensorflow/testdata")
OUT_OF_SCOPE = {"testPredictOnTfLite": "TF Lite",
                "testPredictWithSignatureDefOnTfLite": "TF Lite",
                "test_profiler_service_with_valid_trace_request": "the profiler",
                "test_tf_text": "tf_text"}
TEST_CLASS = "TensorflowModelServerTest"


def extract(repo: str, ref: str, target: str) -> list:
  """The needed files of `ref` from a clone (work tree or bare), into `target`; returns the
  files whose content the clone lacks (a partial clone leaves out its largest blobs)."""
  git = ["git", "-C", repo]
  listing = subprocess.run(git + ["ls-tree", "-r", "-z", ref, "--", *NEEDED],
                           capture_output=True, check=True).stdout.decode().split("\0")
  missing = []
  for entry in filter(None, listing):
    meta, path = entry.split("\t", 1)
    mode, _, blob = meta.split()
    content = subprocess.run(git + ["cat-file", "blob", blob], capture_output=True)
    if content.returncode != 0:
      missing.append(path)
      continue
    destination = os.path.join(target, path)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    with open(destination, "wb") as f:
      f.write(content.stdout)
    if mode == "100755":
      os.chmod(destination, 0o755)
  return missing


def layout(root: str) -> dict:
  """TEST_SRCDIR with the stand-in binary and the test data, and the Python overlay that
  makes `tensorflow_serving.model_servers.test_util` importable beside the pip package."""
  source = os.path.join(root, "source")
  srcdir = os.path.join(root, "srcdir")
  serving = os.path.join(srcdir, "tf_serving", "tensorflow_serving")
  os.makedirs(os.path.join(serving, "model_servers"))
  os.makedirs(os.path.join(serving, "servables", "tensorflow"))
  os.symlink(os.path.join(source, "tensorflow_serving", "servables", "tensorflow", "testdata"),
             os.path.join(serving, "servables", "tensorflow", "testdata"))
  stand_in = os.path.join(serving, "model_servers", "tensorflow_model_server")
  with open(stand_in, "w") as f:
    # exec: the test kills the process it started, which must be the server itself.
    f.write(f'#!/bin/sh\nexec {sys.executable} -m serving.model_server "$@"\n')
  os.chmod(stand_in, 0o755)
  overlay = os.path.join(root, "overlay", "tensorflow_serving")
  os.makedirs(os.path.join(overlay, "model_servers"))
  with open(os.path.join(overlay, "__init__.py"), "w") as f:
    f.write("import pkgutil\n__path__ = pkgutil.extend_path(__path__, __name__)\n")
  open(os.path.join(overlay, "model_servers", "__init__.py"), "w").close()
  shutil.copytree(os.path.join(source, "tensorflow_serving", "model_servers", "test_util"),
                  os.path.join(overlay, "model_servers", "test_util"))
  open(os.path.join(overlay, "model_servers", "test_util", "__init__.py"), "a").close()
  return {"srcdir": srcdir, "overlay": os.path.dirname(overlay),
          "test": os.path.join(source, TEST_FILE)}


def test_names(test_file: str):
  with open(test_file) as f:
    return [line.split("def ", 1)[1].split("(", 1)[0] for line in f
            if line.startswith("  def test")]


def run(paths: dict, names, timeout_secs: float, root: str) -> dict:
  xml_path = os.path.join(root, "results.xml")
  env = dict(os.environ, TEST_SRCDIR=paths["srcdir"], TEST_TMPDIR=os.path.join(root, "tmp"),
             PYTHONPATH=os.pathsep.join([paths["overlay"], PROJECT_ROOT]),
             TF_CPP_MIN_LOG_LEVEL="2",
             TESTBRIDGE_TEST_ONLY=" ".join(f"{TEST_CLASS}.{n}" for n in names))
  os.makedirs(env["TEST_TMPDIR"], exist_ok=True)
  completed = subprocess.run(
      [sys.executable, paths["test"], f"--xml_output_file={xml_path}"], env=env,
      cwd=root, capture_output=True, text=True, timeout=timeout_secs)
  outcomes = {}
  if os.path.exists(xml_path):
    for case in ElementTree.parse(xml_path).iter("testcase"):
      failed = case.find("failure") if case.find("failure") is not None else case.find("error")
      outcomes[case.get("name")] = ("passed" if failed is None
                                    else f"failed: {(failed.get('message') or '')[:300]}")
  return {"returncode": completed.returncode, "outcomes": outcomes,
          "log_tail": completed.stderr[-3000:]}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--serving_repo", required=True,
                      help="a clone of github.com/tensorflow/serving (work tree or bare)")
  parser.add_argument("--ref", default="2.15.1", help="tag or commit of the test (2.15.1)")
  parser.add_argument("--timeout_secs", type=float, default=1800)
  parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
  args = parser.parse_args()
  root = tempfile.mkdtemp(prefix="tf-serving-conformance-")
  try:
    os.makedirs(os.path.join(root, "source"))
    missing = extract(args.serving_repo, args.ref, os.path.join(root, "source"))
    paths = layout(root)
    every = test_names(paths["test"])
    in_scope = [n for n in every if n not in OUT_OF_SCOPE]
    result = run(paths, in_scope, args.timeout_secs, root)
    passed = sorted(n for n, o in result["outcomes"].items() if o == "passed")
    report = {"ref": args.ref, "tests_in_file": len(every),
              "out_of_scope": OUT_OF_SCOPE, "in_scope": len(in_scope),
              "passed": len(passed), "not_passed": {n: o for n, o in result["outcomes"].items()
                                                    if o != "passed"},
              "not_run": sorted(set(in_scope) - set(result["outcomes"])),
              "files_missing_from_the_clone": missing,
              "outcomes": result["outcomes"]}
    if report["not_passed"] or report["not_run"]:
      report["log_tail"] = result["log_tail"]
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if len(passed) == len(in_scope) else 1
  finally:
    if args.keep:
      print(f"kept {root}", file=sys.stderr)
    else:
      shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
  sys.exit(main())
