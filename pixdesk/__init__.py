"""pixdesk: a resident local Pixtral vision-language daemon."""

__version__ = "0.1.0"
