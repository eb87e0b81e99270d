"""Signals models_app sends for other apps to act on (models_app imports none of them).

``reply_orphaned``: with Ray placement, a reply whose web process died before it ended, collected from
its runner by another web process's reaper (models_app/serving/cluster.py). Sent once per orphan with
``tag`` (what the dead process attached to the generation: inference_app's chat tag), ``text`` (every
token generated), ``stats`` (the runner's final GenerationStats fields, or None) and ``error`` (the
generation's error message, or None). A receiver that raises gets the same orphan again on a later
pass, so receivers must be idempotent.
"""

from django.dispatch import Signal

reply_orphaned = Signal()
