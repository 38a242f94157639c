"""The technician's app: one tab per screen, refreshed from the agent's control socket, keyboard-driven.

Keys: ``1``-``7`` switch screens, ``r`` refreshes now, ``q`` quits; each screen adds its own (shown in the footer).
The active screen is refreshed every ``refresh_s`` on a worker thread; results and failures come back to the UI
only as messages (``post_message``). Actions a screen asks for are confirmed (``y``/``n``) before they run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane

from edge.errors import EdgeError
from edge.tui.capacity import CapacityView
from edge.tui.logs import LogsView
from edge.tui.messages import ActionRequested, FetchRequested
from edge.tui.models import ModelsView
from edge.tui.overview import OverviewView
from edge.tui.receipts import ReceiptsView
from edge.tui.studies import StudiesView
from edge.tui.unit import UnitView

__all__ = ["SCREENS", "ConfirmScreen", "Source", "TechnicianApp"]


class Source(Protocol):
    """Where the app gets its data: the control socket's client (:class:`edge.control.ControlClient`)."""

    def call(self, method: str, *, timeout_s: float | None = None, **params: Any) -> Any: ...


SCREENS: tuple[tuple[str, str, Callable[[], Widget]], ...] = (
    ("overview", "Overview", OverviewView),
    ("studies", "Studies", StudiesView),
    ("unit", "Unit", UnitView),
    ("receipts", "Receipts", ReceiptsView),
    ("models", "Models", ModelsView),
    ("capacity", "Capacity", CapacityView),
    ("logs", "Logs", LogsView),
)
"""Tab id, title and view of each screen, in tab order (keys 1-7)."""

_ACTION_TIMEOUT_S = 900.0
"""An OTA apply downloads and health-checks a bundle: let it take its time."""


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; ``y`` confirms, ``n`` or Escape declines."""

    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No", show=False),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 60; height: auto; border: thick $warning; padding: 1 2; background: $surface; }
    """

    def __init__(self, prompt: str) -> None:
        super().__init__()
        self.prompt = prompt

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.prompt, markup=False)
            yield Static("\n[b]y[/] yes   [b]n[/] no")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class TechnicianApp(App[None]):
    """``btt-edge tui``: the running agent, screen by screen."""

    TITLE = "BTT Edge"
    BINDINGS: ClassVar[list[Binding | tuple[str, str] | tuple[str, str, str]]] = [
        *(Binding(str(i), f"show('{tab}')", title, show=False) for i, (tab, title, _) in enumerate(SCREENS, 1)),
        Binding("r", "refresh", "Refresh"),
        Binding("q", "quit", "Quit"),
    ]
    CSS = """
    TabPane { padding: 0 1; }
    """

    class Fetched(Message):
        """A worker's answer from the agent, for ``deliver``."""

        def __init__(self, deliver: Callable[[Any], None], result: Any) -> None:
            super().__init__()
            self.deliver = deliver
            self.result = result

    class Failed(Message):
        """The agent could not be asked, or refused."""

        def __init__(self, error: str, action: str = "") -> None:
            super().__init__()
            self.error = error
            self.action = action

    class Done(Message):
        """A technician action finished."""

        def __init__(self, action: str, result: Any) -> None:
            super().__init__()
            self.action = action
            self.result = result

    def __init__(self, source: Source, *, refresh_s: float = 2.0, where: str = "") -> None:
        super().__init__()
        self.source = source
        self.refresh_s = refresh_s
        self.sub_title = where
        self.connected: bool | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs"):
            for i, (tab, title, view) in enumerate(SCREENS, 1):
                with TabPane(f"{i} {title}", id=tab):
                    yield view()
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.refresh_s, self.action_refresh)
        self.action_refresh()

    # --- screens ------------------------------------------------------------------------------------------------

    def active_view(self) -> Any:
        """The view of the tab on show."""
        pane = self.query_one(TabbedContent).active_pane
        assert pane is not None
        return pane.children[0]

    def action_show(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def on_tabbed_content_tab_activated(self, _event: TabbedContent.TabActivated) -> None:
        view = self.active_view()
        if view.can_focus:
            view.focus()
        elif view.query(DataTable):
            view.query(DataTable).first().focus()
        self.action_refresh()

    def action_refresh(self) -> None:
        view = self.active_view()
        self.fetch(view.METHOD, view.params(), view.show)

    # --- talking to the agent (worker threads; back only through messages) ------------------------------------

    @work(thread=True, exclusive=True, group="fetch")
    def fetch(self, method: str, params: dict[str, Any], deliver: Callable[[Any], None]) -> None:
        try:
            result = self.source.call(method, **params)
        except EdgeError as exc:
            self.post_message(self.Failed(str(exc)))
            return
        self.post_message(self.Fetched(deliver, result))

    @work(thread=True, group="action")
    def act(self, method: str, params: dict[str, Any]) -> None:
        try:
            result = self.source.call(method, timeout_s=_ACTION_TIMEOUT_S, **params)
        except EdgeError as exc:
            self.post_message(self.Failed(str(exc), action=method))
            return
        self.post_message(self.Done(method, result))

    def on_fetch_requested(self, message: FetchRequested) -> None:
        self.fetch(message.method, message.params, message.deliver)

    def on_technician_app_fetched(self, message: Fetched) -> None:
        if self.connected is not True:
            self.connected = True
            self.title = "BTT Edge"
        message.deliver(message.result)

    def on_technician_app_failed(self, message: Failed) -> None:
        if message.action:
            self.notify(f"{message.action}: {message.error}", title="Refused", severity="error", timeout=8)
            return
        self.connected = False
        self.title = "BTT Edge - agent not reachable"
        self.notify(message.error, title="Agent", severity="error", timeout=4)

    def on_technician_app_done(self, message: Done) -> None:
        self.notify(f"{message.action}: {message.result}", title="Done", timeout=6)
        self.action_refresh()

    def on_action_requested(self, message: ActionRequested) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.act(message.method, message.params)
            else:
                self.notify(f"{message.method}: not done", timeout=3)

        self.push_screen(ConfirmScreen(message.prompt), answered)
