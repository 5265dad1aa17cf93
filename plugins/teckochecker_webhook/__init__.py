"""Built-in plugin: the ``webhook`` action, which POSTs a signed JSON document (Standard Webhooks) once per
fired trigger.

Registered through the ``teckochecker`` entry-point group like any third-party plugin.
"""

from __future__ import annotations

from teckochecker import hookimpl
from teckochecker.plugin_api import Action
from teckochecker_webhook.action import WebhookAction, WebhookOptions
from teckochecker_webhook.document import EVENT_TYPE, webhook_document

__all__ = ["EVENT_TYPE", "WebhookAction", "WebhookOptions", "teckochecker_action_types", "webhook_document"]


@hookimpl
def teckochecker_action_types() -> list[type[Action]]:
    return [WebhookAction]
