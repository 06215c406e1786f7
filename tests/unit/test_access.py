"""Access policy (subnetviz.access): who may enter a shared server and what a viewer may do.

Pure logic, no Streamlit: the env parsing, the constant-time checks, the roles and the OIDC
account lists. Each secret below is made up for the test.
"""

from __future__ import annotations

import hmac

import pytest

from subnetviz import access
from subnetviz.access import EDITOR, VIEWER, check_password, check_token, policy, role_for_user
from subnetviz.errors import ConfigError

TOKEN = "viewer-token-0123456789"
EDITOR_TOKEN = "editor-token-9876543210"
AUTH = {
    "redirect_uri": "https://lab.example.org/oauth2callback",
    "cookie_secret": "c" * 40,
    "client_id": "id",
    "client_secret": "shh",
    "server_metadata_url": "https://idp.example.org/.well-known",
}


@pytest.fixture(autouse=True)
def _authlib(monkeypatch):
    """OIDC validation checks that Authlib is installed; the tests do not depend on this machine's packages."""
    monkeypatch.setattr(access, "_authlib_installed", lambda: True)


def pol(auth=None, **env):
    return policy({f"SUBNETVIZ_{k.upper()}": v for k, v in env.items()}, auth=auth or {})


# --- open server (nothing configured) -------------------------------------------------------------
def test_nothing_configured_is_open_to_editors_as_before():
    p = pol()
    assert not p.closed and p.methods == ()
    assert p.anonymous().name == EDITOR
    assert all(p.anonymous().can(a) for a in access.ACTIONS)
    assert check_token(TOKEN, p) is None and check_password("anything-at-all", p) is None


def test_empty_variables_count_as_unset():
    assert pol(access_token="", password="  ").anonymous().name == EDITOR


# --- tokens ---------------------------------------------------------------------------------------
def test_access_token_closes_the_server_and_admits_viewers():
    p = pol(access_token=TOKEN)
    assert p.closed and p.methods == ("token",)
    assert p.anonymous() is None
    role = check_token(TOKEN, p)
    assert role.name == VIEWER and role.can("view") and role.can("export")
    assert not role.can("launch") and not role.can("upload")


@pytest.mark.parametrize(
    "given",
    [
        None,
        "",
        "viewer-token-012345678",
        TOKEN + "x",
        TOKEN.upper(),
        " " + TOKEN,
        "é" * 20,
        ["viewer-token-0123456789"],
        123,
    ],
)
def test_wrong_or_missing_tokens_are_refused(given):
    assert check_token(given, pol(access_token=TOKEN, editor_token=EDITOR_TOKEN)) is None


def test_editor_token_grants_everything_and_the_viewer_token_does_not():
    p = pol(access_token=TOKEN, editor_token=EDITOR_TOKEN)
    assert check_token(EDITOR_TOKEN, p).name == EDITOR
    assert all(check_token(EDITOR_TOKEN, p).can(a) for a in access.ACTIONS)
    assert check_token(TOKEN, p).name == VIEWER


def test_a_password_is_not_a_token_and_a_token_is_not_a_password():
    p = pol(access_token=TOKEN, password="correct horse")
    assert check_token("correct horse", p) is None
    assert check_password(TOKEN, p) is None
    assert check_password("correct horse", p).name == VIEWER


def test_every_secret_is_compared_with_compare_digest_and_never_with_eq(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    p = pol(access_token=TOKEN, editor_token=EDITOR_TOKEN, password="pw-viewer-1", editor_password="pw-editor-1")
    assert check_token(TOKEN, p).name == VIEWER
    # Both configured tokens are compared, even after the first match fails or succeeds (no early exit).
    assert len(calls) == 2
    # The compared values are fixed-length digests: the secret's length does not show in the timing.
    assert all(isinstance(a, bytes) and len(a) == len(b) == 32 for a, b in calls)
    calls.clear()
    assert check_token(EDITOR_TOKEN, p).name == EDITOR and len(calls) == 2
    calls.clear()
    assert check_password("nope-nope", p) is None
    assert len(calls) == 2
    calls.clear()
    assert check_token("x" * 500, p) is None and len(calls) == 2


def test_without_compare_digest_nothing_is_admitted(monkeypatch):
    """The answer comes from compare_digest alone: a stub that says 'different' refuses even the right token."""
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    p = pol(access_token=TOKEN, password="correct horse")
    assert check_token(TOKEN, p) is None and check_password("correct horse", p) is None


# --- passwords ------------------------------------------------------------------------------------
def test_passwords_give_viewer_and_editor_roles():
    p = pol(password="viewers pass", editor_password="editors pass")
    assert p.closed and p.methods == ("password",)
    assert check_password("viewers pass", p).name == VIEWER
    assert check_password("editors pass", p).name == EDITOR
    assert check_password("viewers pas", p) is None
    assert check_password("", p) is None and check_password(None, p) is None


def test_non_ascii_passwords_work():
    p = pol(password="pässwörd-ünïcode")
    assert check_password("pässwörd-ünïcode", p).name == VIEWER
    assert check_password("passwordunicode", p) is None


# --- viewers' extra rights and public read-only servers --------------------------------------------
@pytest.mark.parametrize(
    "value, launch, upload",
    [
        ("launch", True, False),
        ("upload", False, True),
        ("launch,upload", True, True),
        ("upload launch", True, True),
        ("launch+upload", True, True),
        ("ALL", True, True),
        ("none", False, False),
        ("view,export", False, False),
    ],
)
def test_visitors_can_widens_what_viewers_may_do(value, launch, upload):
    viewer = check_token(TOKEN, pol(access_token=TOKEN, visitors_can=value))
    assert (viewer.can("launch"), viewer.can("upload")) == (launch, upload)
    assert viewer.can("view") and viewer.can("export")


def test_editor_token_alone_makes_a_public_read_only_server():
    p = pol(editor_token=EDITOR_TOKEN)
    assert not p.closed
    assert p.anonymous().name == VIEWER and not p.anonymous().can("launch")
    assert check_token(EDITOR_TOKEN, p).name == EDITOR


def test_visitors_can_alone_makes_everyone_a_viewer():
    assert pol(visitors_can="none").anonymous().name == VIEWER
    assert pol(visitors_can="upload").anonymous().can("upload")
    assert not pol(visitors_can="upload").anonymous().can("launch")


def test_unknown_action_is_a_bug_not_a_refusal():
    with pytest.raises(ValueError, match="unknown action 'delete'"):
        pol().anonymous().can("delete")


def test_refusal_says_what_and_what_to_do():
    assert access.refusal("launch") == (
        "Viewers cannot launch or cancel jobs on this server; ask its owner for an editor link or account."
    )
    assert "upload or import files" in access.refusal("upload")


# --- OIDC -----------------------------------------------------------------------------------------
def user(email="alice@lab.org", **claims):
    return {"is_logged_in": True, "email": email, **claims}


def test_oidc_without_lists_admits_every_account_as_viewer():
    p = pol(AUTH)
    assert p.oidc and p.closed and p.oidc_providers == (None,) and p.methods == ("oidc",)
    assert p.anonymous() is None
    assert role_for_user(user(), p).name == VIEWER
    assert role_for_user({"is_logged_in": False}, p) is None
    assert role_for_user({}, p) is None


def test_oidc_editors_and_viewers_lists_with_domains():
    p = pol(AUTH, editors="Alice@Lab.org", viewers="@lab.org, bob@elsewhere.com")
    assert role_for_user(user("alice@lab.org"), p).name == EDITOR
    assert role_for_user(user("carol@lab.org"), p).name == VIEWER
    assert role_for_user(user("bob@elsewhere.com"), p).name == VIEWER
    assert role_for_user(user("mallory@elsewhere.com"), p) is None
    assert role_for_user(user("eve@evil-lab.org"), p) is None  # a domain entry is the whole domain, not a suffix
    assert role_for_user(user("eve@sub.lab.org"), p) is None
    assert role_for_user(user(None), p) is None


def test_an_unverified_email_matches_no_list():
    p = pol(AUTH, editors="alice@lab.org")
    assert role_for_user(user("alice@lab.org", email_verified=False), p).name == VIEWER
    assert role_for_user(user("alice@lab.org", email_verified=True), p).name == EDITOR
    assert role_for_user(user("alice@lab.org", email_verified=False), pol(AUTH, viewers="alice@lab.org")) is None


def test_oidc_named_providers():
    auth = {
        "redirect_uri": AUTH["redirect_uri"],
        "cookie_secret": AUTH["cookie_secret"],
        "google": {k: AUTH[k] for k in access.OIDC_KEYS},
        "okta": {k: AUTH[k] for k in access.OIDC_KEYS},
    }
    assert pol(auth).oidc_providers == ("google", "okta")


def test_oidc_settings_can_come_from_secrets_toml(tmp_path, monkeypatch):
    (tmp_path / ".streamlit").mkdir()
    lines = ["[auth]"] + [f'{k} = "{v}"' for k, v in AUTH.items()]
    (tmp_path / ".streamlit" / "secrets.toml").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert policy({}).oidc_providers == (None,)


# --- configuration errors: one line, naming the variable, never the secret --------------------------
@pytest.mark.parametrize(
    "env, auth, match",
    [
        ({"access_token": "short"}, {}, "SUBNETVIZ_ACCESS_TOKEN must be at least 16"),
        ({"editor_token": "has spaces in it, 16+"}, {}, "SUBNETVIZ_EDITOR_TOKEN must be"),
        ({"access_token": "a&b=c" * 5}, {}, "travels in URLs"),
        ({"password": "1234567"}, {}, "SUBNETVIZ_PASSWORD is shorter than 8"),
        ({"editor_password": "short"}, {}, "SUBNETVIZ_EDITOR_PASSWORD is shorter"),
        ({"access_token": TOKEN, "editor_token": TOKEN}, {}, "are the same"),
        ({"password": "same-password", "editor_password": "same-password"}, {}, "are the same"),
        ({"visitors_can": "launch,uplaod"}, {}, "'uplaod' is not an action.*Did you mean 'upload'"),
        ({"visitors_can": "delete"}, {}, "'delete' is not an action"),
        ({"editors": "alice@lab.org"}, {}, "SUBNETVIZ_EDITORS lists accounts, but .* no \\[auth\\]"),
        ({"viewers": "@lab.org"}, {}, "SUBNETVIZ_VIEWERS lists accounts"),
        ({"editors": "alice"}, AUTH, "'alice' is neither an e-mail nor an @domain"),
        ({}, {**AUTH, "redirect_uri": ""}, "lacks redirect_uri"),
        ({}, {k: v for k, v in AUTH.items() if k != "cookie_secret"}, "lacks cookie_secret"),
        ({}, {**AUTH, "redirect_uri": "https://lab.example.org/"}, "ending in /oauth2callback"),
        ({}, {**AUTH, "cookie_secret": "xxx"}, "cookie_secret .* at least 32"),
        ({}, {k: v for k, v in AUTH.items() if k != "client_secret"}, "lacks client_secret"),
        (
            {},
            {
                "redirect_uri": AUTH["redirect_uri"],
                "cookie_secret": AUTH["cookie_secret"],
                "my_idp": {"client_id": "x"},
            },
            r"\[auth.my_idp\] lacks client_secret, server_metadata_url",
        ),
    ],
)
def test_configuration_errors_are_one_line(env, auth, match):
    with pytest.raises(ConfigError, match=match) as err:
        pol(auth, **env)
    message = str(err.value)
    assert "\n" not in message
    for secret in ("short", "1234567", TOKEN, "same-password", "xxx", "shh"):
        assert secret not in message.replace("shorter", "")


def test_oidc_without_authlib_says_what_to_install(monkeypatch):
    monkeypatch.setattr(access, "_authlib_installed", lambda: False)
    with pytest.raises(ConfigError, match="needs the Authlib package: pip install Authlib"):
        pol(AUTH)


def test_unreadable_secrets_toml_is_a_config_error(tmp_path, monkeypatch):
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text("[auth\nredirect_uri = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ConfigError, match=r"^\./\.streamlit/secrets\.toml: not readable TOML") as err:
        policy({})
    assert str(tmp_path) not in str(err.value)  # no absolute server path for visitors to read


def test_secrets_never_show_in_the_policy_repr():
    p = pol(access_token=TOKEN, editor_token=EDITOR_TOKEN, password="viewers pass", editor_password="editors pass")
    text = repr(p)
    assert all(s not in text for s in (TOKEN, EDITOR_TOKEN, "viewers pass", "editors pass"))


def test_access_does_not_import_streamlit():
    import subprocess
    import sys

    code = "import subnetviz.access, sys; assert 'streamlit' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
