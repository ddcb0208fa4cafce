"""The forms of a conversation's settings and of a user's own settings.

ConversationSettingsForm is the one check of a conversation's settings, whether they come
from the settings panel (POST /c/<id>/settings/, strings) or from a `send` frame
(`settings`, JSON values: settings_from_frame()).
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator

from chat.capabilities import EFFORTS
from chat.models import UserSettings

SETTINGS_FIELDS = ("system_prompt", "temperature", "top_p", "max_output_tokens", "reasoning_effort")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> None:
    """Refuse half of a surrogate pair (JSON can escape one), which is not UTF-8 and no
    database stores; CharField refuses NUL itself."""
    found = LONE_SURROGATE.search(text)
    if found is not None:
        raise ValidationError(
            f"It holds a lone surrogate (U+{ord(found.group()):04X}, half of a character "
            f"such as an emoji) at character {found.start() + 1}, which cannot be stored.",
            code="surrogate",
        )


def _json_scalar(value: Any, *kinds: type) -> None:
    """Refuse what neither a form post (strings) nor a frame's JSON of the kind sends:
    lists, objects, and true/false, which Python counts as the numbers 1 and 0."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, *kinds))):
        raise ValidationError("Enter a number." if kinds else "Enter text.", code="invalid")


class TextSetting(forms.CharField):
    def to_python(self, value: Any) -> Any:
        _json_scalar(value)
        return super().to_python(value)


class NumberSetting(forms.FloatField):
    def to_python(self, value: Any) -> Any:
        _json_scalar(value, int, float)
        try:
            return super().to_python(value)
        except OverflowError:  # float() of an integer with hundreds of digits
            raise ValidationError(self.error_messages["invalid"], code="invalid") from None


class WholeNumberSetting(forms.IntegerField):
    def to_python(self, value: Any) -> Any:
        _json_scalar(value, int, float)
        return super().to_python(value)


class ChoiceSetting(forms.ChoiceField):
    def to_python(self, value: Any) -> Any:
        _json_scalar(value)
        return super().to_python(value)


class ConversationSettingsForm(forms.Form):
    """A conversation's settings, all optional: blank (or null) is the upstream's default.
    A post sets all five; a field left out is blank."""

    system_prompt = TextSetting(required=False)  # (its length limit: __init__)
    temperature = NumberSetting(
        required=False,
        min_value=0,
        max_value=2,
        widget=forms.NumberInput(attrs={"step": "0.1", "placeholder": "default"}),
    )
    top_p = NumberSetting(
        required=False,
        min_value=0,
        max_value=1,
        label="Top p",
        widget=forms.NumberInput(attrs={"step": "0.05", "placeholder": "default"}),
    )
    max_output_tokens = WholeNumberSetting(required=False)  # (its limits: __init__)
    reasoning_effort = ChoiceSetting(
        required=False, choices=[("", "default"), *((effort, effort) for effort in EFFORTS)]
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("auto_id", "settings-%s")
        super().__init__(*args, **kwargs)
        # From settings when the form is made, so that tests and deployments can change them.
        self.fields["system_prompt"] = TextSetting(
            required=False,
            max_length=settings.CHAT_MAX_MESSAGE_CHARS,
            validators=[storable],
            widget=forms.Textarea(attrs={"rows": 4, "placeholder": "none"}),
        )
        self.fields["max_output_tokens"] = WholeNumberSetting(
            required=False,
            min_value=1,
            max_value=settings.CHAT_MAX_OUTPUT_TOKENS,
            label="Max output tokens",
            widget=forms.NumberInput(attrs={"step": "1", "placeholder": "default"}),
        )

    def error_text(self) -> str:
        """Every error in one line, each after its field's name."""
        return " ".join(
            f"{name}: {' '.join(str(message) for message in messages)}"
            for name, messages in self.errors.items()
        )


def settings_from_frame(value: Any) -> dict[str, Any]:
    """A `send` frame's `settings` object, checked by ConversationSettingsForm: the values
    to save, or ValidationError with a message for the `error` frame."""
    if not isinstance(value, dict):
        raise ValidationError("The field 'settings' must be an object.")
    unknown = sorted(str(key)[:50] for key in value if key not in SETTINGS_FIELDS)
    if unknown:
        raise ValidationError(
            f"The field 'settings' has unknown fields: {', '.join(map(repr, unknown))}; "
            f"it takes {', '.join(SETTINGS_FIELDS)}."
        )
    form = ConversationSettingsForm(data=value)
    if not form.is_valid():
        raise ValidationError(f"The field 'settings' is not valid: {form.error_text()}")
    return form.cleaned_data


class UserSettingsForm(forms.ModelForm):
    class Meta:
        model = UserSettings
        fields = ["custom_instructions"]
        widgets = {"custom_instructions": forms.Textarea(attrs={"rows": 8})}
        help_texts = {
            "custom_instructions": "Sent to the model in the system prompt of every "
            "conversation, after the site's and before the conversation's own."
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["custom_instructions"]
        field.validators += [MaxLengthValidator(settings.CHAT_MAX_MESSAGE_CHARS), storable]
        field.widget.attrs["maxlength"] = str(settings.CHAT_MAX_MESSAGE_CHARS)


class ImportForm(forms.Form):
    """A file of conversations to import (chat.exports: this app's JSON export, or
    ChatGPT's conversations.json); its size is checked before it is read."""

    file = forms.FileField(
        label="Export file",
        help_text="This app's JSON export (one conversation or all), or conversations.json "
        "from ChatGPT's data export.",
        widget=forms.ClearableFileInput(attrs={"accept": ".json,application/json"}),
    )

    def clean_file(self) -> Any:
        upload = self.cleaned_data["file"]
        limit = settings.CHAT_IMPORT_MAX_BYTES
        if upload.size > limit:
            raise ValidationError(
                f"The file is too large: {upload.size:,} bytes, and the most this site "
                f"imports is {limit:,}.",
                code="too_large",
            )
        return upload
