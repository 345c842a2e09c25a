"""Every input control of the modules' .ui files is bound to a parameter-node field that fits it.

Qt is not available here, so the modules cannot be imported; instead the .ui XML and the
module source (``ast``) are read and checked against the rules of Slicer's
``parameterNodeWrapper`` GUI connectors - the checks that would otherwise only fail when the
module is opened in Slicer:

* each input control has ``SlicerParameterName`` (bound by ``connectGui``) or
  ``BrainLDMParameterName`` (bound by the widget because its choices are dynamic), naming a
  field of the module's ``@parameterNodeWrapper`` class, and each field has exactly one control;
* the control type can represent the field type (checkbox <-> bool, ctkSliderWidget <->
  bounded float, combo box <-> ``Choice``, node combo box <-> node class in its nodeTypes...);
* the wrapper's fields are the fields of the logic's parameters dataclass, with the same
  defaults and choices, so ``mrml.read_parameters`` reads what the wrapper wrote;
* slider ranges are those of the thesis grid; every ``self.ui.<name>`` used by a widget exists.
"""

from __future__ import annotations

import ast
import os
import dataclasses
import re
import typing
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("slicer", reason="Slicer's MRML core is not installed (pip install 'brainldm[slicer]')")

from brainldm.logic import mrml  # noqa: E402
from brainldm.logic.segment import GUIDANCE_RANGE, MIX_RANGE, STEPS_RANGE, SegmentParameters  # noqa: E402
from brainldm.logic.synth import DIAMETER_RANGE, MASK_GUIDANCE_RANGE, SynthParameters  # noqa: E402
from brainldm.logic.train import TrainParameters  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODULES = {
    "BrainLDMSegment": SegmentParameters,
    "BrainLDMSynth": SynthParameters,
    "BrainLDMTrain": TrainParameters,
}
INPUT_CLASSES = {
    "qMRMLNodeComboBox", "ctkSliderWidget", "QSlider", "QSpinBox", "QDoubleSpinBox", "QCheckBox", "QComboBox",
    "QLineEdit", "QTextEdit", "ctkPathLineEdit", "ctkDirectoryButton",
}


@dataclasses.dataclass
class Field:
    name: str
    annotation: str  # source text
    base: str  # unannotated type's source text
    metadata: list[ast.expr]
    default: object  # literal value, or None


def wrapper_fields(module: str) -> dict[str, Field]:
    tree = ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)
               and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)]
    assert len(classes) == 1, f"{module}: expected one @parameterNodeWrapper class"
    fields = {}
    for statement in classes[0].body:
        if not isinstance(statement, ast.AnnAssign):
            continue
        annotation = statement.annotation
        base, metadata = annotation, []
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
            elements = annotation.slice.elts
            base, metadata = elements[0], list(elements[1:])
        default = ast.literal_eval(statement.value) if statement.value is not None else None
        fields[statement.target.id] = Field(statement.target.id, ast.unparse(annotation), ast.unparse(base),
                                            metadata, default)
    return fields


def annotation_call(field: Field, name: str) -> list | None:
    for item in field.metadata:
        if isinstance(item, ast.Call) and ast.unparse(item.func) == name:
            return [ast.literal_eval(arg) for arg in item.args]
    return None


def ui_widgets(module: str) -> list[dict]:
    tree = ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui")
    widgets = []
    for element in tree.iter("widget"):
        properties = {}
        for prop in element.findall("property"):
            value = next(iter(prop), None)
            if value is None:
                continue
            if value.tag == "stringlist":
                properties[prop.get("name")] = [s.text for s in value.findall("string")]
            elif value.tag in ("double", "number"):
                properties[prop.get("name")] = float(value.text)
            else:
                properties[prop.get("name")] = value.text
        widgets.append({"class": element.get("class"), "name": element.get("name"), "props": properties})
    return widgets


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_input_control_is_bound_to_a_fitting_field(module):
    fields = wrapper_fields(module)
    bound: dict[str, list[str]] = {}
    for widget in ui_widgets(module):
        if widget["class"] not in INPUT_CLASSES:
            continue
        props = widget["props"]
        name = props.get("SlicerParameterName") or props.get("BrainLDMParameterName")
        assert name, f"{module}.ui: input control {widget['name']} ({widget['class']}) has no SlicerParameterName"
        assert name in fields, f"{module}.ui: {widget['name']} is bound to {name!r}, not a parameter node field"
        bound.setdefault(name, []).append(widget["name"])
        field = fields[name]
        cls = widget["class"]
        manual = "BrainLDMParameterName" in props
        bounds = annotation_call(field, "WithinRange")
        if cls == "QCheckBox":
            assert field.base == "bool", f"{widget['name']}: checkbox needs a bool field, {name} is {field.base}"
        elif cls in ("QSpinBox", "QSlider"):
            assert field.base == "int", f"{widget['name']}: {cls} needs an int field, {name} is {field.base}"
        elif cls in ("ctkSliderWidget", "QDoubleSpinBox"):
            assert field.base == "float", f"{widget['name']}: {cls} needs a float field, {name} is {field.base}"
            if cls == "ctkSliderWidget":
                assert bounds, f"{name}: a ctkSliderWidget needs WithinRange (parameterNodeWrapper refuses unbounded)"
                assert (props["minimum"], props["maximum"]) == pytest.approx(tuple(bounds)), \
                    f"{widget['name']}: .ui range differs from {name}'s WithinRange {bounds}"
        elif cls == "QComboBox":
            if manual:
                assert field.base == "str", f"{widget['name']}: manually bound combo box needs a str field"
            else:
                assert annotation_call(field, "Choice"), f"{name}: a QComboBox needs Annotated[..., Choice([...])]"
                assert field.base in ("str", "int", "float", "bool")
        elif cls in ("QLineEdit", "QTextEdit"):
            assert field.base == "str", f"{widget['name']}: {cls} needs a str field, {name} is {field.base}"
        elif cls in ("ctkDirectoryButton", "ctkPathLineEdit"):
            assert field.base == "Path", f"{widget['name']}: {cls} needs a Path field, {name} is {field.base}"
        elif cls == "qMRMLNodeComboBox":
            assert field.base.startswith("vtkMRML"), f"{widget['name']}: node combo box needs a node field"
            assert field.base in props.get("nodeTypes", []), \
                f"{widget['name']}: nodeTypes {props.get('nodeTypes')} do not include {field.base}"
    unbound = sorted(set(fields) - set(bound))
    assert not unbound, f"{module}: fields without a control: {unbound}"
    doubles = {k: v for k, v in bound.items() if len(v) > 1}
    assert not doubles, f"{module}: fields bound to several controls: {doubles}"


def _dataclass_kind(hint) -> tuple[str, tuple]:
    kind, tp = mrml._field_kind(hint)
    stripped = hint
    if typing.get_origin(stripped) in (typing.Union, __import__("types").UnionType):
        stripped = [a for a in typing.get_args(stripped) if a is not type(None)][0]
    literal = typing.get_args(stripped) if typing.get_origin(stripped) is typing.Literal else ()
    return (tp.__name__ if kind == "node" else kind), literal


@pytest.mark.parametrize("module", sorted(MODULES))
def test_wrapper_fields_match_the_logic_parameters(module):
    cls = MODULES[module]
    fields = wrapper_fields(module)
    hints = mrml._hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    assert sorted(fields) == sorted(names), f"{module}: wrapper and {cls.__name__} fields differ"
    defaults = cls()
    for name in names:
        kind, literal = _dataclass_kind(hints[name])
        field = fields[name]
        expected_base = {"bool": ["bool"], "int": ["int", "float"], "float": ["float"], "str": ["str"],
                         "path": ["Path"]}.get(kind, [kind])
        assert field.base in expected_base, f"{module}.{name}: wrapper type {field.base}, logic type {kind}"
        choices = annotation_call(field, "Choice")
        if literal:
            assert choices and list(choices[0]) == list(literal), f"{module}.{name}: choices {choices} != {literal}"
        default = getattr(defaults, name)
        if kind in ("int", "float", "bool", "str"):
            wrapper_default = field.default if field.default is not None else {"str": "", "bool": False}.get(kind, 0)
            assert wrapper_default == default, f"{module}.{name}: default {field.default!r} != {default!r}"


def test_segment_sliders_cover_the_thesis_grid():
    fields = wrapper_fields("BrainLDMSegment")
    assert tuple(annotation_call(fields["guidance"], "WithinRange")) == GUIDANCE_RANGE == (0.0, 20.0)
    assert tuple(annotation_call(fields["steps"], "WithinRange")) == STEPS_RANGE == (10, 250)
    assert tuple(annotation_call(fields["mix"], "WithinRange")) == MIX_RANGE == (0.90, 0.99)
    assert tuple(annotation_call(wrapper_fields("BrainLDMSynth")["diameter_mm"], "WithinRange")) == DIAMETER_RANGE
    assert tuple(annotation_call(wrapper_fields("BrainLDMSynth")["mask_guidance"], "WithinRange")) == MASK_GUIDANCE_RANGE


@pytest.mark.parametrize("module", sorted(MODULES))
def test_widget_code_uses_only_controls_that_exist(module):
    source = (ROOT / module / f"{module}.py").read_text(encoding="utf-8")
    used = set(re.findall(r"self\.ui\.(\w+)", source))
    names = {w["name"] for w in ui_widgets(module)}
    assert used, f"{module}: the widget uses no controls?"
    assert used <= names, f"{module}: the widget uses controls missing from the .ui: {sorted(used - names)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_button_does_something(module):
    """A push button in the .ui that the widget never connects would be enabled and do nothing."""
    source = (ROOT / module / f"{module}.py").read_text(encoding="utf-8")
    buttons = [w["name"] for w in ui_widgets(module) if w["class"] in ("QPushButton", "ctkPushButton", "QToolButton")]
    assert buttons, f"{module}: no buttons?"
    idle = [b for b in buttons if not re.search(rf"self\.ui\.{b}\.connect\(\s*[\"']clicked", source)]
    assert not idle, f"{module}: buttons never connected: {idle}"


def test_synthesize_button_is_disabled_and_says_why():
    widgets = {w["name"]: w for w in ui_widgets("BrainLDMSynth")}
    button = widgets["synthesizeButton"]
    assert button["props"].get("enabled") == "false"
    assert button["props"].get("toolTip") == "synthesis model not yet available"
    # the module enables it once synthesis_status() finds a model (a shipped one, or none: that reason)
    from brainldm.logic.catalogue import find_synthesis_model
    from brainldm.logic.synth import synthesis_status

    status = synthesis_status()
    if find_synthesis_model() is None:
        assert status.available is False and status.reason == "synthesis model not yet available"
    else:
        assert status.available is True and status.reason.startswith("synthesis model ")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_files_are_complete(module):
    folder = ROOT / module
    for path in (folder / "CMakeLists.txt", folder / "Testing" / "CMakeLists.txt",
                 folder / "Testing" / "Python" / "CMakeLists.txt", folder / "Resources" / "Icons" / f"{module}.png"):
        assert path.is_file(), f"missing {path}"
    assert (folder / "Resources" / "Icons" / f"{module}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cmake = (folder / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in cmake and f"set(MODULE_NAME {module})" in cmake
    source = (folder / f"{module}.py").read_text(encoding="utf-8")
    compile(source, str(folder / f"{module}.py"), "exec")
    tree = ast.parse(source)
    classes = {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert {module, f"{module}Widget", f"{module}Logic", f"{module}Test", f"{module}ParameterNode"} <= classes
    # brainldm (and torch through it) is never imported when Slicer loads the module
    top_level = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    imported = {alias.name for node in top_level for alias in node.names} | {
        node.module for node in top_level if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(name.split(".")[0] in ("brainldm", "torch", "monai", "nibabel") for name in imported), imported


def test_extension_cmakelists():
    text = (ROOT / "CMakeLists.txt").read_text()
    for needed in ("EXTENSION_HOMEPAGE", 'EXTENSION_CATEGORY "Segmentation"', "EXTENSION_DESCRIPTION",
                   "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", 'EXTENSION_DEPENDS "PyTorch"',
                   "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                   "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert needed in text, needed
    for module in MODULES:
        assert f"add_subdirectory({module})" in text


def test_dependency_bootstrap_finds_the_bundled_core(monkeypatch):
    """BrainLDMLib (imported by the modules before brainldm is installed) finds this checkout's core."""
    import importlib
    import sys

    monkeypatch.syspath_prepend(str(ROOT / "BrainLDMSegment"))
    sys.modules.pop("BrainLDMLib", None)
    sys.modules.pop("BrainLDMLib.dependencies", None)
    lib = importlib.import_module("BrainLDMLib")
    import brainldm

    assert lib.coreFolder() == ROOT
    assert lib.dependencies.bundledCoreVersion(ROOT) == brainldm.__version__
    assert lib.dependencies._isSourceCheckout(ROOT)  # a checkout is installed editable
    assert lib.isCoreImportable() and lib.dependencies.missingRequirements() == []
    assert lib.childEnvironment()["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert Path(lib.pythonSlicerExecutable()).exists()
    assert all(Path(d).is_dir() for d in lib.modelDirs())
