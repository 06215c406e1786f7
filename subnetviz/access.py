"""Who may use a shared server, and for what: the access policy, read from the environment here only.

Dashboards are shared by URL, so every visitor is a stranger to the server. A server can be
*closed* (a visitor passes a check before anything is drawn) and *read-only* (a viewer may view and
export, but not launch jobs or upload files). This module is the pure half: it reads the settings
and answers "which role does this token / password / logged-in account get?".
:func:`subnetviz.ui.gate` calls it and keeps nothing in the session but the resulting :class:`Role`.

Settings (all optional; with none of them the app is open to everyone, as before):

- ``SUBNETVIZ_ACCESS_TOKEN``: visitors need ``?token=<it>`` in the URL (or type it once) -> viewer.
- ``SUBNETVIZ_EDITOR_TOKEN``: the same, but the visitor becomes an editor.
- ``SUBNETVIZ_PASSWORD`` / ``SUBNETVIZ_EDITOR_PASSWORD``: a password typed in a form -> viewer / editor.
- OIDC: an ``[auth]`` section in ``.streamlit/secrets.toml`` -> Streamlit's ``st.login``. Every account
  the identity provider vouches for is a viewer unless ``SUBNETVIZ_VIEWERS`` lists who may enter;
  ``SUBNETVIZ_EDITORS`` lists the editors. Entries: e-mails or ``@domain``, separated by commas.
- ``SUBNETVIZ_VISITORS_CAN``: what viewers may do besides view and export: ``launch``, ``upload``,
  ``launch,upload``, ``all`` or ``none`` (the default).

With no viewer check configured (no access token, no password, no OIDC) everyone may enter: as an
editor, unless an editor token or password or ``SUBNETVIZ_VISITORS_CAN`` is set, which makes the
server public and read-only, with editors let in by their token or password.

Secrets are compared in constant time (:func:`hmac.compare_digest` on SHA-256 digests, so neither
the content nor the length of a secret leaks through timing) and never appear in a ``repr`` or in
an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from subnetviz.errors import ConfigError, suggest

ACTIONS = ("view", "export", "launch", "upload")
ALWAYS = frozenset({"view", "export"})  # what every admitted visitor may do
VIEWER, EDITOR = "viewer", "editor"
MIN_TOKEN, MIN_PASSWORD, MIN_COOKIE_SECRET = 16, 8, 32
OIDC_KEYS = ("client_id", "client_secret", "server_metadata_url")

_TOKEN = re.compile(r"[A-Za-z0-9._~-]+")  # characters that survive a URL unescaped
_PERSON = re.compile(r"[^@\s,]*@[^@\s,]+")  # alice@lab.org, or @lab.org for a whole domain
_MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
_REFUSALS = {"launch": "launch or cancel jobs", "upload": "upload or import files"}


@dataclass(frozen=True)
class Role:
    """What an admitted visitor may do: ``name`` is ``viewer`` or ``editor``."""

    name: str
    actions: frozenset[str]

    def can(self, action: str) -> bool:
        """Whether this role may do ``action`` (one of :data:`ACTIONS`)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        return action in self.actions


@dataclass(frozen=True)
class AccessPolicy:
    """The server's access settings (see the module docstring); build it with :func:`policy`."""

    token: str | None = field(default=None, repr=False)
    editor_token: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    editor_password: str | None = field(default=None, repr=False)
    #: OIDC providers for ``st.login``: ``None`` is the ``[auth]`` section's own, a name an ``[auth.NAME]``.
    oidc_providers: tuple[str | None, ...] = ()
    viewers: frozenset[str] = frozenset()
    editors: frozenset[str] = frozenset()
    #: what viewers may do besides view and export; ``None`` when ``SUBNETVIZ_VISITORS_CAN`` is unset.
    visitors_can: frozenset[str] | None = None

    @property
    def oidc(self) -> bool:
        return bool(self.oidc_providers)

    @property
    def methods(self) -> tuple[str, ...]:
        """The checks a visitor can pass, among ``oidc``, ``token`` and ``password``."""
        used = {
            "oidc": self.oidc,
            "token": bool(self.token or self.editor_token),
            "password": bool(self.password or self.editor_password),
        }
        return tuple(m for m, on in used.items() if on)

    @property
    def closed(self) -> bool:
        """True when a visitor must pass a check before seeing anything."""
        return bool(self.token or self.password or self.oidc)

    def role(self, name: str) -> Role:
        if name == EDITOR:
            return Role(EDITOR, frozenset(ACTIONS))
        if name == VIEWER:
            return Role(VIEWER, ALWAYS | (self.visitors_can or frozenset()))
        raise ValueError(f"unknown role {name!r}; expected {VIEWER!r} or {EDITOR!r}")

    def anonymous(self) -> Role | None:
        """The role of a visitor who passed no check: ``None`` on a closed server."""
        if self.closed:
            return None
        read_only = self.editor_token or self.editor_password or self.visitors_can is not None
        return self.role(VIEWER if read_only else EDITOR)


def policy(environ: Mapping[str, str] | None = None, auth: Mapping | None = None) -> AccessPolicy:
    """The access policy from ``environ`` (default ``os.environ``) and the OIDC settings.

    ``auth`` is the ``[auth]`` section of Streamlit's secrets (``{}`` when there is none); with
    ``None`` it is read from ``~/.streamlit/secrets.toml`` and ``./.streamlit/secrets.toml``, the
    files Streamlit reads by default. Raises :class:`ConfigError` (one line, never quoting a
    secret) for a setting that would leave the server less protected than its owner meant.
    """
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name, "")
        return value if value.strip() else None

    token, editor_token = _token(get, "SUBNETVIZ_ACCESS_TOKEN"), _token(get, "SUBNETVIZ_EDITOR_TOKEN")
    password, editor_password = _password(get, "SUBNETVIZ_PASSWORD"), _password(get, "SUBNETVIZ_EDITOR_PASSWORD")
    if token and token == editor_token:
        raise ConfigError("SUBNETVIZ_ACCESS_TOKEN and SUBNETVIZ_EDITOR_TOKEN are the same; give editors their own.")
    if password and password == editor_password:
        raise ConfigError("SUBNETVIZ_PASSWORD and SUBNETVIZ_EDITOR_PASSWORD are the same; give editors their own.")
    providers = _oidc_providers(_secrets_auth() if auth is None else auth)
    viewers, editors = _people(get, "SUBNETVIZ_VIEWERS"), _people(get, "SUBNETVIZ_EDITORS")
    if (viewers or editors) and not providers:
        name = "SUBNETVIZ_VIEWERS" if viewers else "SUBNETVIZ_EDITORS"
        raise ConfigError(
            f"{name} lists accounts, but .streamlit/secrets.toml has no [auth] section to log them in "
            "with; add one (see the README, 'Sharing a server safely') or unset it."
        )
    return AccessPolicy(
        token,
        editor_token,
        password,
        editor_password,
        providers,
        viewers,
        editors,
        _visitors_can(get("SUBNETVIZ_VISITORS_CAN")),
    )


def check_token(given: object, policy: AccessPolicy) -> Role | None:
    """The role a URL token grants, or ``None``; every configured token is compared, in constant time."""
    return _check(given, policy, policy.token, policy.editor_token)


def check_password(given: object, policy: AccessPolicy) -> Role | None:
    """The role a typed password grants, or ``None``; every configured password is compared, in constant time."""
    return _check(given, policy, policy.password, policy.editor_password)


def role_for_user(user: Mapping, policy: AccessPolicy) -> Role | None:
    """The role of an OIDC account (``st.user`` as a dict), or ``None`` when it may not enter.

    An e-mail the provider marks unverified (``email_verified: false``) matches no list.
    """
    if not policy.oidc or not user.get("is_logged_in"):
        return None
    email = str(user.get("email") or "").strip().lower()
    if user.get("email_verified") is False:
        email = ""
    if _listed(email, policy.editors):
        return policy.role(EDITOR)
    if policy.viewers and not _listed(email, policy.viewers):
        return None
    return policy.role(VIEWER)


def refusal(action: str) -> str:
    """One line for the place where a viewer would have found a launch button or an upload widget."""
    return (
        f"Viewers cannot {_REFUSALS.get(action, action)} on this server; ask its owner for an editor link or account."
    )


# --- parsing --------------------------------------------------------------------------------------
def _check(given: object, policy: AccessPolicy, viewer: str | None, editor: str | None) -> Role | None:
    if not isinstance(given, str) or not given:
        return None
    as_editor, as_viewer = _same(given, editor), _same(given, viewer)  # both, always: no early exit
    if as_editor:
        return policy.role(EDITOR)
    return policy.role(VIEWER) if as_viewer else None


def _same(given: str, secret: str | None) -> bool:
    if secret is None:
        return False
    return hmac.compare_digest(_digest(given), _digest(secret))


def _digest(text: str) -> bytes:
    # Digests have one length, so compare_digest leaks neither the secret's length nor its content,
    # and non-ASCII input (which compare_digest refuses as str) is fine.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def _token(get, name: str) -> str | None:
    value = get(name)
    if value is not None and (len(value) < MIN_TOKEN or not _TOKEN.fullmatch(value)):
        raise ConfigError(
            f"{name} must be at least {MIN_TOKEN} letters, digits or . _ ~ - (it travels in URLs); "
            f"make one with: {_MAKE_TOKEN}"
        )
    return value


def _password(get, name: str) -> str | None:
    value = get(name)
    if value is not None and len(value) < MIN_PASSWORD:
        raise ConfigError(
            f"{name} is shorter than {MIN_PASSWORD} characters; choose a longer one (or a token: {_MAKE_TOKEN})."
        )
    return value


def _people(get, name: str) -> frozenset[str]:
    value = get(name)
    entries = [e.strip().lower() for e in re.split(r"[,\s]+", value or "") if e.strip()]
    for entry in entries:
        if not _PERSON.fullmatch(entry):
            raise ConfigError(
                f"{name}: {entry!r} is neither an e-mail nor an @domain; expected e.g. 'alice@lab.org, @lab.org'."
            )
    return frozenset(entries)


def _listed(email: str, entries: frozenset[str]) -> bool:
    if "@" not in email:
        return False
    domain = "@" + email.rpartition("@")[2]
    return email in entries or domain in entries


def _visitors_can(value: str | None) -> frozenset[str] | None:
    if value is None:
        return None
    allowed = {"launch", "upload", "view", "export", "all", "none"}
    words = [w.strip().lower() for w in re.split(r"[,\s+]+", value) if w.strip()]
    for word in words:
        if word not in allowed:
            raise ConfigError(
                f"SUBNETVIZ_VISITORS_CAN: {word!r} is not an action; expected launch, upload, "
                f"'launch,upload', all or none.{suggest(word, allowed)}"
            )
    if "all" in words:
        return frozenset({"launch", "upload"})
    return frozenset(words) & {"launch", "upload"}


def _secrets_auth() -> Mapping:
    """The ``[auth]`` section of the secrets files Streamlit reads by default (``{}`` when none)."""
    auth: dict = {}
    files = {"~/.streamlit/secrets.toml": Path.home(), "./.streamlit/secrets.toml": Path.cwd()}
    for label, folder in files.items():
        path = folder / ".streamlit" / "secrets.toml"
        if path.is_file():
            try:
                section = tomllib.loads(path.read_text(encoding="utf-8")).get("auth", {})
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{label}: not readable TOML ({exc}).") from None
            auth.update(section if isinstance(section, Mapping) else {})
    return auth


def _oidc_providers(auth: Mapping) -> tuple[str | None, ...]:
    """Validate an ``[auth]`` section as ``st.login`` will use it; its providers, ``()`` when it is empty."""
    if not auth:
        return ()
    where = ".streamlit/secrets.toml [auth]"
    missing = [k for k in ("redirect_uri", "cookie_secret") if not auth.get(k)]
    if missing:
        raise ConfigError(f"{where} lacks {', '.join(missing)}; see the README, 'Sharing a server safely'.")
    if not str(auth["redirect_uri"]).endswith("/oauth2callback"):
        raise ConfigError(
            f"{where}: redirect_uri must be the app's address ending in /oauth2callback, "
            "e.g. https://lab.example.org/oauth2callback."
        )
    if len(str(auth["cookie_secret"])) < MIN_COOKIE_SECRET:
        raise ConfigError(
            f"{where}: cookie_secret signs the login cookie and must be at least {MIN_COOKIE_SECRET} "
            "random characters; make one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    named = {k: v for k, v in auth.items() if isinstance(v, Mapping)}
    sections = named or {None: auth}
    for name, section in sections.items():
        missing = [k for k in OIDC_KEYS if not section.get(k)]
        label = f".streamlit/secrets.toml [auth.{name}]" if name else where
        if missing:
            raise ConfigError(f"{label} lacks {', '.join(missing)} (from your identity provider).")
        if name and "_" in name:
            raise ConfigError(f"{label}: Streamlit refuses provider names with '_'; rename it.")
    if not _authlib_installed():
        raise ConfigError(
            "OIDC login (the [auth] section of .streamlit/secrets.toml) needs the Authlib package: "
            "pip install Authlib (or streamlit[auth])."
        )
    return tuple(sections)


def _authlib_installed() -> bool:
    return importlib.util.find_spec("authlib") is not None
