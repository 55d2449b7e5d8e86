"""Ray's fake multi-node provider, with a temp dir of its own for every node it launches.

Ray 2.60's ``FakeMultiNodeProvider`` starts each node (``ray._private.node.Node``) without a temp dir, so every
node shares the head's: its session folder, and in it ``runtime_resources``, where each node's runtime-env agent
unpacks a job's working_dir and deletes it when that node no longer needs it. A worker node leaving then deletes
the working_dir a job's driver on the head is running in. On a real cluster every machine has its own
``/tmp/ray``; here each node gets ``<temp_root>/<node number>`` (``provider.temp_root`` in the autoscaling config).

The autoscaler's monitor process imports this module (``provider: {type: external, module:
fake_node_provider.PerNodeTempDirProvider}``), so ``scripts/`` is on its PYTHONPATH (``local_cluster.py``).
"""

from __future__ import annotations

import functools
import os
from unittest import mock

import ray._private.parameter
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider


class PerNodeTempDirProvider(FakeMultiNodeProvider):
    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        with self.lock:  # the provider numbers its nodes under this lock; the next one is ours
            temp_dir = os.path.join(self.provider_config["temp_root"], f"n{self._next_node_id + 1}")
            params = functools.partial(ray._private.parameter.RayParams, temp_dir=temp_dir)
            with mock.patch.object(ray._private.parameter, "RayParams", params):
                super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
