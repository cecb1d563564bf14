"""`eve chat`: one streamed answer, or an interactive multi-turn session in the terminal."""

import sys

from ..errors import EveError
from ..processing import load_image
from ..processing.chat import image_part, text_part
from .engine import GenerationOptions, encode, generate

HELP = "/image PATH attaches an image to your next message, /reset starts over, /exit (or Ctrl-D) quits"


class Chat:
    """A conversation: `ask` streams the answer to `out` and keeps both turns in the history."""

    def __init__(self, model, processor, options: GenerationOptions, out=None):
        self.model, self.processor, self.options = model, processor, options
        self.out = out or sys.stdout
        self.messages, self.pending = [], []

    def attach(self, path) -> None:
        self.pending.append(load_image(path))  # read now, so a bad path is reported at once

    def ask(self, text: str) -> str:
        content = [image_part(im) for im in self.pending] + [text_part(text)]
        prompt = encode(self.processor, self.messages + [{"role": "user", "content": content}])
        [done] = generate(self.model, self.processor, [prompt], self.options, on_delta=self._print)
        self.out.write("\n")
        self.messages += [{"role": "user", "content": content}, {"role": "assistant", "content": done.text}]
        self.pending = []
        return done.text

    def _print(self, i: int, text: str) -> None:
        self.out.write(text)
        self.out.flush()


def interactive(chat: Chat, read=input) -> None:
    print(HELP, file=sys.stderr)
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            break
        try:
            if line in ("/exit", "/quit"):
                break
            elif line == "/reset":
                chat.messages, chat.pending = [], []
            elif line.startswith("/image "):
                chat.attach(line.removeprefix("/image ").strip())
                print(f"[{len(chat.pending)} image(s) attached to your next message]", file=sys.stderr)
            elif line.startswith("/"):
                print(HELP, file=sys.stderr)
            elif line:
                chat.ask(line)
        except EveError as exc:  # a bad image or prompt ends the turn, not the session
            print("error: " + " ".join(str(exc).splitlines()), file=sys.stderr)
