"""OpenAI- and Anthropic-compatible routes, included under /v1/."""

from django.urls import path

from inference_app import anthropic_api, openai_api

urlpatterns = [
    path("models", openai_api.ModelListView.as_view(), name="openai-models"),
    path("models/<str:model>", openai_api.ModelDetailView.as_view(), name="openai-model"),
    path("chat/completions", openai_api.ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("completions", openai_api.CompletionsView.as_view(), name="openai-completions"),
    path("messages", anthropic_api.MessagesView.as_view(), name="anthropic-messages"),
    path("messages/count_tokens", anthropic_api.CountTokensView.as_view(), name="anthropic-count-tokens"),
]
