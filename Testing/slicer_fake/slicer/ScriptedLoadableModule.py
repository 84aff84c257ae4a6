"""Stand-in for ``slicer.ScriptedLoadableModule``: the four base classes, enough to import a
scripted module and run its logic and self-test without Qt."""

from __future__ import annotations

import os
import unittest

import slicer

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest"]


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__
        parent.title = ""
        parent.categories = []
        parent.dependencies = []
        parent.contributors = []
        parent.helpText = ""
        parent.acknowledgementText = ""
        slicer.selfTests[self.moduleName] = self.runTest

    def runTest(self, msec=100, **kwargs) -> None:
        import importlib

        module = importlib.import_module(self.moduleName)
        getattr(module, self.moduleName + "Test")().runTest()


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent
        self.moduleName = self.__class__.__name__[: -len("Widget")]

    def resourcePath(self, filename: str) -> str:
        import importlib

        module = importlib.import_module(self.moduleName)
        return os.path.join(os.path.dirname(module.__file__), "Resources", filename)

    def setup(self) -> None:
        """The developer section needs Qt; nothing to do here."""

    def cleanup(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        self.moduleName = self.__class__.__name__[: -len("Logic")]
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        for node in slicer.mrmlScene._nodes.values():
            if isinstance(node, slicer.vtkMRMLScriptedModuleNode) and node.GetAttribute("ModuleName") == self.moduleName:
                return node
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", self.moduleName)
        node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=1000) -> None:
        pass
