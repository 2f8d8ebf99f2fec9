"""Loading a version as the flags say: meta graph tags, warmup replays, method-name checks."""

import numpy as np
import pytest
from tensorflow_serving.apis import regression_pb2

from export import warmup
from serving.model_server import config_files
from serving.model_server import loading
from serving.model_server.core import CoreOptions, ServerCore
from serving.model_server.status import ServingError
from tests import tiny_models
from tests.serving.model_server import apis
from tests.serving.helpers import predict_request


def core_for(base, **options):
  core = ServerCore(config_files.single_model_config("m", str(base)),
                    CoreOptions(max_num_load_retries=0, file_system_poll_wait_seconds=0,
                                **options))
  core.load()
  return core


def test_the_meta_graph_is_found_by_the_saved_model_tags(tmp_path):
  tiny_models.half_plus_two(str(tmp_path / "m" / "1"), tags=("serve", "custom"))
  with pytest.raises(ServingError, match="due to error: NOT_FOUND: Could not find meta graph "
                                         "def matching supplied tags: { serve }"):
    core_for(tmp_path / "m")
  core = core_for(tmp_path / "m", saved_model_tags=("serve", "custom"))
  spec, outputs = apis.predict(core, predict_request("", {"x": [[2.0]]}, name="m").model_spec,
                               {"x": np.array([[2.0]], np.float32)})
  assert spec.version.value == 1 and outputs["y"].tolist() == [[3.0]]
  core.close()


@pytest.mark.parametrize("iterations, replays", [(0, 2), (1, 2), (3, 6)])
def test_each_warmup_record_is_replayed_as_often_as_asked(tmp_path, monkeypatch, iterations,
                                                         replays):
  logs = [warmup.predict_log("serving_default", {"x": np.array([[1.0]], np.float32)})] * 2
  tiny_models.half_plus_two(str(tmp_path / "m" / "1"), warmup_logs=logs)
  seen = []
  original = loading.predict

  def counting(handle, signature, *args):
    seen.append(signature)
    return original(handle, signature, *args)

  monkeypatch.setattr(loading, "predict", counting)
  core_for(tmp_path / "m", num_request_iterations_for_warmup=iterations).close()
  assert seen == ["serving_default"] * replays


def test_warmup_makes_the_session_callables_of_every_timeout_the_apis_use(tmp_path):
  logs = [warmup.predict_log("serving_default", {"x": np.array([[1.0]], np.float32)})]
  tiny_models.half_plus_two(str(tmp_path / "m" / "1"), warmup_logs=logs)
  core = core_for(tmp_path / "m", warmup_timeouts_ms=(None, 1200))
  with core.servable(predict_request("", {}, name="m").model_spec) as servable:
    made = set(servable._loaded._callables)  # pylint: disable=protected-access
  core.close()
  assert {key[3] for key in made if key[0] == "serving_default"} == {None, 1200}


def test_the_method_name_check_holds_signatures_to_their_api_when_asked(tmp_path):
  tiny_models.half_plus_two(str(tmp_path / "m" / "1"), extras=True)
  x = {"x": np.array([[2.0]], np.float32)}
  unchecked = core_for(tmp_path / "m")
  assert apis.predict(unchecked, predict_request("odd_method", {}, name="m").model_spec, x)[1][
      "y"].tolist() == [[3.0]]
  unchecked.close()
  checked = core_for(tmp_path / "m", enable_signature_method_name_check=True)
  with pytest.raises(ServingError) as raised:
    apis.predict(checked, predict_request("odd_method", {}, name="m").model_spec, x)
  assert raised.value.code.name == "INTERNAL"
  assert raised.value.message == (
      "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
      "tensorflow/serving/classify, tensorflow/serving/regress}. Was: "
      "tensorflow/serving/something_else")
  request = regression_pb2.RegressionRequest()
  request.model_spec.name, request.model_spec.signature_name = "m", "classify_x_to_y"
  with pytest.raises(ServingError, match="Expected regression signature method_name to be "
                                         "tensorflow/serving/regress. Was: "
                                         "tensorflow/serving/classify"):
    apis.regress(checked, request.model_spec, [tiny_models.x_example(1.0).SerializeToString()])
  checked.close()


def test_a_version_dir_without_a_saved_model_fails_in_the_loaders_words(tmp_path):
  (tmp_path / "m" / "1").mkdir(parents=True)
  with pytest.raises(ServingError, match=r"due to error: NOT_FOUND: Could not find SavedModel "
                                         r"\.pb or \.pbtxt at supplied export directory path: "):
    core_for(tmp_path / "m")


def test_a_specific_policy_serves_the_versions_there_and_fails_when_none_is(tmp_path):
  for version in (1, 3):
    tiny_models.half_plus_two(str(tmp_path / "m" / str(version)))
  config = config_files.single_model_config("m", str(tmp_path / "m"))
  config.model_config_list.config[0].model_version_policy.specific.versions.extend([3, 4])
  assert loading.aspired_versions(config.model_config_list.config[0]) == {
      3: str(tmp_path / "m" / "3")}
  del config.model_config_list.config[0].model_version_policy.specific.versions[:]
  config.model_config_list.config[0].model_version_policy.specific.versions.append(9)
  with pytest.raises(loading.NoVersions, match="No versions of servable m found under base "
                                               "path"):
    loading.aspired_versions(config.model_config_list.config[0])
  config.model_config_list.config[0].base_path = str(tmp_path / "nowhere")
  with pytest.raises(loading.NoVersions, match="Could not find base path .*nowhere for "
                                               "servable m with error NOT_FOUND"):
    loading.aspired_versions(config.model_config_list.config[0])
