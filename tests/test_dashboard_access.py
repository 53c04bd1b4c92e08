"""Who may see and do what on the dashboard: the one rule (`dashboard.access.decide_access`) tested directly,
then the app under AppTest as each kind of visitor, and the tenant scope inside the query layer."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from llmcost.config import DashboardRoles, DashboardSettings, load_settings
from llmcost.dashboard import failed as fq
from llmcost.dashboard import queries as dq
from llmcost.dashboard import ui
from llmcost.dashboard.access import OPERATOR, VIEWER, Access, decide_access, is_loopback, without_sign_in
from llmcost.errors import ConfigError
from llmcost.store import connection as store
from tests.dashboard_seed import event, failed_log, insert
from tests.test_dashboard_pages import (  # noqa: F401
    APP,
    PAGES,
    assert_no_exception,
    navigation_pages,
    open_section,
    table,
    texts,
)

# The lazy sections that hold operator forms: opened wherever a test looks for their buttons.
ACTION_SECTIONS = ("failed_dismiss_section", "budgets_switches")

RULES = DashboardSettings(
    roles=DashboardRoles(operator=("ana@example.com", "group:llm-ops"), viewer=("@example.com", "vic@partner.org")),
    tenants={"@client.example": ("tenant-b",), "carl@example.com": ("tenant-c",)},
    tenant_claim="tenant_id",
)
AUTH_SECRETS = {"auth": {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                         "client_id": "llmcost", "client_secret": "secret",
                         "server_metadata_url": "http://127.0.0.1:9/.well-known/openid-configuration"}}
CONFIG = """
[dashboard]
tenant_claim = "tenant_id"
[dashboard.roles]
operator = ["ana@example.com"]
viewer = ["vic@example.com"]
[dashboard.tenants]
"tess@client.example" = ["tenant-b"]
"""


# ---------------------------------------------------------------- the rule

@pytest.mark.parametrize("claims, expected", [
    ({"email": "ana@example.com"}, Access(OPERATOR, "ana@example.com", signed_in=True)),
    ({"email": "Ana@Example.com"}, Access(OPERATOR, "ana@example.com", signed_in=True)),
    ({"email": "zoe@example.com", "groups": ["llm-ops", "staff"]}, Access(OPERATOR, "zoe@example.com", signed_in=True)),
    ({"email": "bob@example.com"}, Access(VIEWER, "bob@example.com", signed_in=True)),  # by domain
    ({"email": "vic@partner.org"}, Access(VIEWER, "vic@partner.org", signed_in=True)),
    ({"email": "tess@client.example"}, Access(VIEWER, "tess@client.example", ("tenant-b",), signed_in=True)),
    ({"email": "x@elsewhere.org", "tenant_id": "tenant-z"}, Access(VIEWER, "x@elsewhere.org", ("tenant-z",), True)),
    # A tenant scope always wins: operator actions act on every tenant at once.
    ({"email": "ana@example.com", "tenant_id": ["t2", "t1"]}, Access(VIEWER, "ana@example.com", ("t1", "t2"), True)),
    ({"email": "carl@example.com"}, Access(VIEWER, "carl@example.com", ("tenant-c",), signed_in=True)),
])
def test_decide_access_gives_each_identity_its_role_and_scope(claims, expected):
    assert decide_access(claims, RULES) == expected


@pytest.mark.parametrize("claims", [
    {"email": "mallory@elsewhere.org"},
    {"email": "ana@example.com", "email_verified": False},  # an unverified email names no one
    {"email": "bob@sub.example.com"},  # a domain entry is that domain, not its subdomains
    {"email": "bob@notexample.com"},
    {"sub": "12345", "groups": ["staff"]},
    {"email": "x@elsewhere.org", "tenant_id": ""},
])
def test_decide_access_gives_no_access_to_everyone_else(claims):
    assert decide_access(claims, RULES) is None


def test_a_tenant_claim_counts_only_when_configured():
    rules = dataclasses.replace(RULES, tenant_claim=None)
    assert decide_access({"email": "x@elsewhere.org", "tenant_id": "t1"}, rules) is None
    assert decide_access({"email": "bob@example.com", "tenant_id": "t1"}, rules).tenants is None


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True), ("127.0.0.2", True),
    (None, False), ("", False), ("0.0.0.0", False), ("10.1.2.3", False), ("dashboard.example.com", False),
])
def test_is_loopback(address, loopback):
    assert is_loopback(address) is loopback


def test_without_sign_in_local_mode_operates_and_anonymous_only_reads():
    assert without_sign_in("127.0.0.1", DashboardSettings()).can_operate
    assert without_sign_in("0.0.0.0", DashboardSettings()) is None
    anonymous = without_sign_in("0.0.0.0", DashboardSettings(allow_anonymous=True))
    assert anonymous.role == VIEWER and not anonymous.can_operate and anonymous.sees_every_tenant


def test_dashboard_config_is_read_and_checked(tmp_path):
    path = tmp_path / "llmcost.toml"
    path.write_text(CONFIG)
    rules = load_settings(config=path).dashboard
    assert rules.roles.operator == ("ana@example.com",) and rules.tenants == {"tess@client.example": ("tenant-b",)}
    path.write_text('[dashboard.roles]\noperator = ["ana"]\n')
    with pytest.raises(ConfigError, match=r"'ana' is not an email, an \"@domain\" or a \"group:NAME\""):
        load_settings(config=path)
    path.write_text('[dashboard]\nallow_anonymus = true\n')
    with pytest.raises(ConfigError, match="did you mean 'allow_anonymous'"):
        load_settings(config=path)
    path.write_text('[dashboard]\nallow_anonymous = "yes"\n')
    with pytest.raises(ConfigError, match="expected true or false"):
        load_settings(config=path)


# ---------------------------------------------------------------- the app as each visitor

OPERATOR_BUTTONS = {"overview_refresh", "failed_replay", "failed_dismiss", "budgets_disable", "budgets_enable",
                    "budgets_resume"}

def seed(settings) -> dt.date:
    day = dt.datetime.now(settings.tz).date()
    insert(settings.db_path, "usage_events", [
        event(day, "1.25", tenant_id="tenant-a", user_id="alice"),
        event(day, "2.50", tenant_id="tenant-b", user_id="bert"),
        event(day, "0.75", tenant_id="tenant-b", user_id="bea", use_case="scaffolder"),
    ])
    noon = dt.datetime.combine(day, dt.time(12))
    insert(settings.db_path, "failed_logs", [failed_log(noon, tenant_id="tenant-a"), failed_log(noon, tenant_id="tenant-b")])
    return day


def open_app(address="127.0.0.1", user=None, page=PAGES[0]) -> AppTest:
    from streamlit import config

    config.set_option("server.address", address)
    app = AppTest.from_file(str(APP), default_timeout=30)
    if user is not None:
        app.secrets = AUTH_SECRETS
        app.user = user
    app.run()
    if page != PAGES[0]:
        app.switch_page(page).run()
    return app


@pytest.fixture(autouse=True)
def restore_address():
    from streamlit import config

    before = config.get_option("server.address")
    yield
    config.set_option("server.address", before)


@pytest.fixture
def configured(settings, tmp_path):
    (tmp_path / "llmcost.toml").write_text(CONFIG)
    seed(settings)
    return settings


def signed_in(email, **claims):
    return {"is_logged_in": True, "email": email, **claims}


def sidebar_captions(app) -> list[str]:
    return [c.value for c in app.sidebar.caption]


def test_local_mode_works_as_before_and_says_so(configured):
    app = open_app()
    assert_no_exception(app)
    assert any(c.startswith("Local mode") for c in sidebar_captions(app))
    assert app.button(key="overview_refresh")


def test_an_open_address_without_sign_in_shows_no_data(configured):
    app = open_app(address="0.0.0.0")
    assert_no_exception(app)
    assert not app.metric and not app.dataframe
    assert "without sign-in, so it shows no data" in app.error[0].value
    assert "allow\\_anonymous = true" in app.error[0].value or "allow_anonymous = true" in app.error[0].value


def test_allow_anonymous_shows_data_read_only(configured, tmp_path):
    (tmp_path / "llmcost.toml").write_text(CONFIG.replace("[dashboard]", "[dashboard]\nallow_anonymous = true"))
    app = open_app(address="0.0.0.0")
    assert_no_exception(app)
    assert app.metric and not [b for b in app.button if b.key == "overview_refresh"]
    assert any(c.startswith("Anonymous, read only") for c in sidebar_captions(app))


def test_a_visitor_who_is_not_signed_in_sees_only_the_sign_in_button(configured):
    app = open_app(user={"is_logged_in": False})
    assert_no_exception(app)
    assert [b.key for b in app.button] == ["auth_sign_in"] and not app.metric


def test_a_signed_in_user_without_a_role_is_told_who_to_ask(configured):
    app = open_app(user=signed_in("mallory@elsewhere.org"))
    assert_no_exception(app)
    assert texts(app.title) == ["No access"]
    assert "add you to `[dashboard.roles]`" in app.error[0].value
    assert not app.metric and [b.key for b in app.button] == ["auth_sign_out_no_access"]


def test_an_operator_sees_every_action(configured):
    app = open_app(user=signed_in("ana@example.com"))
    assert_no_exception(app)
    assert "Signed in as ana@example\\.com (operator)" in sidebar_captions(app)
    assert app.button(key="overview_refresh") and app.button(key="auth_sign_out")
    app.switch_page(PAGES[3]).run()
    open_section(app, "failed_dismiss_section")
    assert app.button(key="failed_replay") and app.button(key="failed_dismiss")
    assert not [t for t in app.text_input if t.key == "failed_dismiss_by"]  # the signed-in email is who
    app.switch_page(PAGES[5]).run()
    open_section(app, "budgets_switches")
    assert app.button(key="budgets_disable") and app.button(key="budgets_enable")


def test_a_viewer_sees_every_page_and_no_action(configured):
    app = open_app(user=signed_in("vic@example.com"))
    keys = set()
    for page in PAGES:
        app.switch_page(page).run()
        for section in ACTION_SECTIONS:  # a viewer's page has no such section; opening one draws nothing
            app.session_state[section] = True
        app.run()
        assert_no_exception(app)
        keys |= {b.key for b in app.button}
    assert "auth_sign_out" in keys and not keys & OPERATOR_BUTTONS
    assert [t.value for t in app.title][-1] == "Budgets and alerts"


def test_a_tenant_viewer_sees_only_their_tenant(configured):
    app = open_app(user=signed_in("tess@client.example"))
    assert_no_exception(app)
    assert app.multiselect(key="filter_tenants").options == ["tenant-b"]
    assert app.metric[0].value == "$3.25"  # tenant-b's two calls, not tenant-a's
    assert not [s for s in app.subheader if s.value == "System-wide spend today"]
    assert not {b.key for b in app.button} & OPERATOR_BUTTONS
    app.switch_page(PAGES[2]).run()
    assert sorted(table(app, "users_top")["user_id"]) == ["bea", "bert"]
    assert table(app, "users_tenants")["tenant_id"].tolist() == ["tenant-b"]
    app.switch_page(PAGES[3]).run()
    assert table(app, "failed_table")["tenant_id"].tolist() == ["tenant-b"]
    assert app.metric[0].value == "1"  # not recovered, all days: only tenant-b's
    # The system-wide pages are not in their navigation: a link to one lands on the default page.
    with pytest.raises(Exception, match="Could not find a navigation page"):
        app.switch_page(PAGES[5]).run()


def test_actions_refuse_a_session_that_may_not_operate(configured):
    today = dt.date.today()
    for access in (Access(VIEWER, "vic@example.com", signed_in=True),
                   Access(VIEWER, "tess@client.example", ("tenant-b",), signed_in=True)):
        st.session_state[ui.CONTEXT_KEY] = ui.PageContext(configured, dq.Filters(today, today), today, access)
        ui.ingest_now(configured, "message")
        assert st.session_state.pop("message")[1].startswith("Only an operator can do this")
        ui.dismiss_now(configured, "message", ["x"], "because", "someone")
        assert st.session_state.pop("message")[1].startswith("Only an operator can do this")


# ---------------------------------------------------------------- the scope inside the query layer

def test_the_tenant_scope_limits_every_query_whatever_the_filters_ask(configured):
    day = dt.datetime.now(configured.tz).date()
    scoped = dq.Filters(day, day, scope=("tenant-b",))
    widened = dataclasses.replace(scoped, tenants=("tenant-a",))  # a widget or URL asking for another tenant
    span, options = dq.sidebar(configured.db_path, ("tenant-b",))
    assert options["tenants"] == ["tenant-b"] and span.events == 2
    assert dq.overview(configured.db_path, day, widened).periods["today"].calls == 0
    assert dq.overview(configured.db_path, day, scoped).periods["today"].cost_usd == Decimal("3.25")
    assert dq.overview(configured.db_path, day, scoped).unrecovered_failed == 1
    assert dq.users(configured.db_path, day, widened).users.empty
    assert sorted(dq.users(configured.db_path, day, scoped).today["user_id"]) == ["bea", "bert"]
    assert dq.use_cases(configured.db_path, day, widened).by_use_case.empty
    assert dq.models(configured.db_path, widened).empty
    failed = fq.failed(configured.db_path, widened, "UTC", fq.FailedLogQuery(status="all"))
    assert failed.rows.empty and failed.unrecovered == 1 and failed.unrecovered_by_error["records"].tolist() == [1]
    budgets = dq.budgets(configured.db_path, day, scoped)
    assert sorted(budgets.today["user_id"]) == ["bea", "bert"] and budgets.use_cases == ("chat_tutor", "scaffolder")
    with store.writing(configured.db_path) as db:
        for alert_id, scope, scope_id in (("a1", "tenant", "tenant-a"), ("a2", "tenant", "tenant-b"),
                                          ("a3", "system", "all")):
            db.execute("INSERT INTO alerts (alert_id, raised_at, day, level, scope, scope_id, metric, message, "
                       "notifier, delivered, attempts) VALUES (?, now()::TIMESTAMP, ?, 'warning', ?, ?, 'cost_usd', "
                       "'m', 'log', true, 1)", [alert_id, day, scope, scope_id])
    everything = dq.Filters(day - dt.timedelta(days=1), day + dt.timedelta(days=1))
    assert len(dq.budgets(configured.db_path, day, everything).alerts) == 3
    only_b = dataclasses.replace(everything, scope=("tenant-b",))
    assert dq.budgets(configured.db_path, day, only_b).alerts["scope_id"].tolist() == ["tenant-b"]


def test_operator_actions_are_recorded_with_the_signed_in_email(configured):
    from llmcost.control import audit
    from llmcost.control.state import ControlState

    app = open_section(open_app(user=signed_in("ana@example.com"), page=PAGES[5]), "budgets_switches")
    app.selectbox(key="budgets_disable_use_case").set_value("chat_tutor")
    app.text_input(key="budgets_disable_reason").input("runaway loop")
    app.checkbox(key="budgets_disable_confirm").check()
    app.button(key="budgets_disable").click().run()
    assert_no_exception(app)
    today = dt.datetime.now(configured.tz).date()
    with ControlState(configured.control_db) as control:
        assert control.disabled()["chat_tutor"]["disabled_by"] == "ana@example.com"
        control.halt(today, "spend spike", by="cli")
    app.run()
    assert not app.button(key="budgets_resume").disabled
    app.button(key="budgets_resume").click().run()
    assert_no_exception(app)
    with ControlState(configured.control_db) as control:
        assert control.halt_reason(today, configured.system.shutdown_usd) is None
    entries = [(e["action"], e["by"]) for e in audit.entries(audit.audit_path_for(configured.control_db))]
    assert entries == [("disable", "ana@example.com"), ("halt", "cli"), ("resume", "ana@example.com")]

    with ControlState(configured.control_db) as control:
        control.halt(today, "another spike", by="cli")
    viewer = open_app(user=signed_in("vic@example.com"), page=PAGES[5])
    assert any("emergency shutdown" in e.value for e in viewer.error)
    assert not [b for b in viewer.button if b.key == "budgets_resume"]  # only operators may resume
