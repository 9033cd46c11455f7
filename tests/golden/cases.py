"""Bad specs and the exact error text a user sees for each.

Each case: overrides on the command line, edits to files under a copy of conf/
(path -> new content, or (path, old, new) replacements), and the golden stderr.
"""

from __future__ import annotations

CASES: dict[str, dict] = {
    "pipeline_unknown_step_bad_option_and_order": {
        "args": ["build", "deployment=ct_seg_nuc"],
        "replace": [
            ("conf/model/ct_seg.yaml", "name: largest_component}", "name: largest_componnet}"),
            ("conf/model/ct_seg.yaml", "{overlap: 0.5}", "{overlap: 1.5, batch: 0, skip: true}"),
            (
                "conf/model/ct_seg.yaml",
                "    - {name: argmax}\n",
                "    - {name: argmax}\n    - {name: clip_normalize}\n",
            ),
            ("conf/deployment/ct_seg_nuc.yaml", "p95_ms <= 100", "volume_dice >= 0.98"),
        ],
    },
    "unknown_deployment": {
        "args": ["show", "deployment=posture_srv"],
    },
    "missing_deployment": {
        "args": ["show"],
    },
    "unknown_recipe_on_command_line": {
        "args": ["build", "deployment=ct_seg_nuc", "recipe=int8_nnfc"],
    },
    "wrong_type_on_command_line": {
        "args": ["build", "deployment=posture_server", "target.threads=two"],
    },
    "unknown_key_on_command_line": {
        "args": ["show", "deployment=posture_server", "model.inptus=[]"],
    },
    "unknown_choice_value": {
        "args": ["show", "deployment=posture_server", "model.task=detection"],
    },
    "unknown_pass_in_recipe_file": {
        "args": ["build", "deployment=posture_server", "recipe=ort_int8_static"],
        "replace": [
            ("conf/recipe/ort_int8_static.yaml", "ort_quantize_static", "ort_quantise_static")
        ],
    },
    "unknown_pass_option": {
        "args": ["build", "deployment=posture_server", "recipe=ort_int8_static"],
        "replace": [("conf/recipe/ort_int8_static.yaml", "calibration_method:", "calibration:")],
    },
    "static_int8_without_calibration_data": {
        "args": [
            "build",
            "deployment=posture_server",
            "recipe=ort_int8_static",
            "model.data.calibration=null",
        ],
    },
    "pass_the_target_runtime_cannot_run": {
        "args": ["build", "deployment=posture_server", "recipe=int8_nncf"],
    },
    "gate_on_a_metric_never_measured": {
        "args": ["build", "deployment=posture_server"],
        "replace": [("conf/deployment/posture_server.yaml", "agreement >= 0.95", "dice >= 0.95")],
    },
    "gate_syntax": {
        "args": ["build", "deployment=posture_server"],
        "replace": [("conf/deployment/posture_server.yaml", "p95_ms <= 20", "p95_ms under 20")],
    },
    "missing_required_field": {
        "args": ["build", "deployment=posture_server"],
        "replace": [("conf/model/posture_cnn.yaml", "task: classification\n", "")],
    },
    "invalid_yaml": {
        "args": ["build", "deployment=ct_seg_nuc"],
        "replace": [("conf/target/intel_nuc.yaml", "threads: 2", "threads: [2")],
    },
    "unknown_target_in_deployment_defaults": {
        "args": ["build", "deployment=ct_seg_nuc"],
        "replace": [
            (
                "conf/deployment/ct_seg_nuc.yaml",
                "override /target: intel_nuc",
                "override /target: intel_nux",
            )
        ],
    },
    "deployment_name_differs_from_file": {
        "args": ["build", "deployment=posture_nuc"],
        "replace": [
            ("conf/deployment/posture_nuc.yaml", "name: posture_nuc", "name: posture_nuc2")
        ],
    },
    "labels_do_not_match_outputs": {
        "args": ["build", "deployment=posture_server", "model.labels=[Standing,Running]"],
    },
    "unknown_candidate_recipe": {
        "args": [
            "build",
            "deployment=posture_server",
            "recipe=auto",
            "recipe.candidates=[ort_fp32,ort_int8_dynamc]",
        ],
    },
    "candidate_recipe_the_target_cannot_run": {
        "args": ["show", "deployment=posture_phone", "recipe=auto"],
        "replace": [("conf/recipe/auto.yaml", "candidates: []", "candidates: [ort_fp32]")],
    },
    "selecting_recipe_with_passes": {
        "args": ["build", "deployment=posture_server", "recipe=auto"],
        "replace": [
            (
                "conf/recipe/auto.yaml",
                "select_by: p50_ms",
                "select_by: p50_ms\npasses:\n  - name: ort_graph_optimize",
            )
        ],
    },
    "candidates_in_a_recipe_that_does_not_select": {
        "args": ["build", "deployment=posture_server", "recipe.candidates=[ort_fp32]"],
    },
    "dimension_minus_one_or_null": {
        "args": ["build", "deployment=posture_server"],
        "replace": [("conf/model/posture_cnn.yaml", "shape: [1, 6, 100]", "shape: [-1, 6, null]")],
    },
    "dynamic_dimension_not_declared": {
        "args": ["build", "deployment=posture_server"],
        "replace": [
            ("conf/model/posture_cnn.yaml", "shape: [1, 6, 100]", "shape: [batch, 6, 100]"),
            ("conf/model/posture_cnn.yaml", "shape: [1, 4]", "shape: [bacth, 4]"),
        ],
    },
    "dynamic_declaration_out_of_order_or_unused": {
        "args": ["build", "deployment=posture_server"],
        "replace": [
            (
                "conf/model/posture_cnn.yaml",
                "shape: [1, 6, 100], dtype: float32}",
                "shape: [batch, 6, 100], dtype: float32,\n"
                "     dynamic: {batch: {min: 8, opt: 4, max: 32}, time: {min: 1, opt: 2, max: 3}}}",
            ),
        ],
    },
    "dynamic_dimension_with_min_equal_max_and_missing_opt": {
        "args": ["build", "deployment=posture_server"],
        "replace": [
            (
                "conf/model/posture_cnn.yaml",
                "shape: [1, 6, 100], dtype: float32}",
                "shape: [batch, 6, time], dtype: float32,\n"
                "     dynamic: {batch: {min: 4, opt: 4, max: 4}, time: {min: 50, max: 200}}}",
            ),
        ],
    },
    "dynamic_batch_on_a_static_shape_target": {
        "args": ["show", "deployment=posture_phone", "target=ios_phone"],
        "replace": [
            (
                "conf/model/posture_cnn.yaml",
                "shape: [1, 6, 100], dtype: float32}",
                "shape: [batch, 6, 100], dtype: float32,\n"
                "     dynamic: {batch: {min: 1, opt: 8, max: 32}}}",
            ),
        ],
    },
    "latency_batch_the_model_does_not_serve": {
        "args": [
            "build",
            "deployment=posture_server",
            "deployment.validation.latency_batches=[1,16]",
        ],
    },
    "latency_batch_outside_the_dynamic_range": {
        "args": [
            "build",
            "deployment=posture_server",
            "deployment.validation.latency_batches=[8,64]",
        ],
        "replace": [
            (
                "conf/model/posture_cnn.yaml",
                "shape: [1, 6, 100], dtype: float32}",
                "shape: [batch, 6, 100], dtype: float32,\n"
                "     dynamic: {batch: {min: 1, opt: 8, max: 32}}}",
            ),
            ("conf/model/posture_cnn.yaml", "shape: [1, 4]", "shape: [batch, 4]"),
        ],
    },
    "gate_on_a_user_metric_never_measured": {
        "args": [
            "build",
            "deployment=posture_server",
            "model.metrics=[{fn: 'mypkg.metrics:auroc'}]",
        ],
        "replace": [
            ("conf/deployment/posture_server.yaml", "agreement >= 0.95", "aucroc >= 0.9"),
            ("conf/deployment/posture_server.yaml", "accuracy_drop <= 0.05", "f1_drop <= 0.01"),
        ],
    },
    "user_metric_names_and_task_options": {
        "args": [
            "build",
            "deployment=ct_seg_server",
            "model.multi_label=true",
            "model.metrics=[{fn: 'mypkg.metrics'}, {fn: 'a.b:c', names: [dice_drop, 'p@k']}]",
        ],
    },
    "every_problem_at_once": {
        "args": [
            "build",
            "deployment=ct_seg_server",
            "recipe=ort_int8_static",
            "target.threads=-1",
        ],
        "replace": [
            ("conf/recipe/ort_int8_static.yaml", "minmax", "minmx"),
            ("conf/model/ct_seg.yaml", "dtype: float32}\noutputs", "dtype: float23}\noutputs"),
            ("conf/deployment/ct_seg_server.yaml", "dice_drop <= 0.01", "dice_drops <= 0.01"),
            ("conf/target/server.yaml", "family: server", "family: servr"),
        ],
    },
    "onnx_source_without_path": {
        "args": ["show", "deployment=posture_server", "model.source.kind=onnx"],
    },
    "mlflow_source_with_a_malformed_uri": {
        "args": [
            "show",
            "deployment=posture_server",
            "model.source.kind=mlflow",
            "model.source.uri=models/team_tiny/1",
            "model.source.factory=null",
            "model.source.weights=null",
            "model.source.train=null",
        ],
    },
    "pytorch_source_with_factory_and_path": {
        "args": ["show", "deployment=posture_server", "model.source.path=models/posture_cnn.pt2"],
    },
    "unknown_source_kind": {
        "args": ["show", "deployment=posture_server", "model.source.kind=tensorflow"],
    },
    "misspelt_source_key": {
        "args": ["show", "deployment=posture_server"],
        "replace": [("conf/model/posture_cnn.yaml", "  weights:", "  weigths:")],
    },
    "missing_weights_file": {
        "args": ["build", "deployment=posture_server", "model.source.weights=models/nope.pt"],
    },
    "huggingface_source_naming_a_file_and_a_bad_class": {
        "args": [
            "show",
            "deployment=posture_server",
            "model.source.kind=huggingface",
            "model.source.path=models/posture_cnn.pt",
            "model.source.auto_class=auto-model",
            "model.source.factory=null",
            "model.source.weights=null",
            "model.source.train=null",
        ],
    },
    "auto_class_on_a_pytorch_source": {
        "args": ["show", "deployment=posture_server", "model.source.auto_class=AutoModel"],
    },
    "monai_bundle_folder_missing": {
        "args": [
            "build",
            "deployment=ct_seg_server",
            "model.source.kind=monai_bundle",
            "model.source.path=models/spleen_bundle",
            "model.source.factory=null",
            "model.source.weights=null",
            "model.source.train=null",
        ],
    },
    "gate_with_spaces_unquoted_on_command_line": {
        "args": [
            "show",
            "deployment=posture_server",
            "deployment.gates=[p95_ms <= 3, agreement >= 0.9]",
        ],
    },
    "dynamic_dimension_declared_twice_and_on_an_output": {
        "args": ["build", "deployment=posture_server"],
        "replace": [
            (
                "conf/model/posture_cnn.yaml",
                "  - {name: imu, shape: [1, 6, 100], dtype: float32}",
                "  - {name: imu, shape: [batch, 6, 100], dtype: float32,\n"
                "     dynamic: {batch: {min: 1, opt: 8, max: 32}}}\n"
                "  - {name: meta, shape: [batch, 3], dtype: float32,\n"
                "     dynamic: {batch: {min: 1, opt: 4, max: 16}}}",
            ),
            (
                "conf/model/posture_cnn.yaml",
                "shape: [1, 4], dtype: float32}",
                "shape: [batch, 4], dtype: float32,\n"
                "     dynamic: {batch: {min: 1, opt: 8, max: 32}}}",
            ),
        ],
    },
    "dynamic_range_and_latency_batches_of_the_wrong_type": {
        "args": [
            "show",
            "deployment=posture_server",
            "deployment.validation.latency_batches=[one]",
        ],
        "replace": [
            (
                "conf/model/posture_cnn.yaml",
                "shape: [1, 6, 100], dtype: float32}",
                "shape: [batch, 6, 100], dtype: float32,\n"
                "     dynamic: {batch: {min: 1, opt: eight, max: 32, step: 2}}}",
            ),
        ],
    },
    "regression_model_gated_on_classification_metrics": {
        "args": ["build", "deployment=posture_server", "model.task=regression", "model.labels=[]"],
    },
    "custom_task_with_multi_label_a_threshold_out_of_range_and_a_gate_on_agreement": {
        "args": [
            "build",
            "deployment=posture_server",
            "model.task=custom",
            "model.multi_label=true",
            "model.threshold=1.5",
        ],
    },
    "user_metric_reported_twice_and_args_not_a_mapping": {
        "args": [
            "show",
            "deployment=posture_server",
            "model.metrics=[{fn: 'mypkg.metrics:auroc'}, "
            "{fn: 'mypkg.other:scores', names: [auroc], args: 3}]",
        ],
    },
    "onnx_source_file_missing": {
        "args": [
            "build",
            "deployment=posture_server",
            "model.source={kind: onnx, path: models/mobilenet.onnx}",
        ],
    },
    "mlflow_source_without_uri_with_a_path": {
        "args": [
            "show",
            "deployment=posture_server",
            "model.source={kind: mlflow, path: models/net.onnx}",
        ],
    },
    "torch_program_recipe_for_an_onnx_source": {
        "args": [
            "show",
            "deployment=posture_phone_litert",
            "model.source={kind: onnx, path: models/posture.onnx}",
        ],
    },
}
