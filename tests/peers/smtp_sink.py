"""A real SMTP server (aiosmtpd) for mizuban's e-mail tests.

Receives on 127.0.0.1:PORT and writes every message twice into OUT_DIR: the
message exactly as received (NNN.eml) and a decoded, human-readable copy
(NNN.txt: To, Subject, then the text body). Prints READY once listening.

usage: python3 smtp_sink.py PORT OUT_DIR
"""
import asyncio
import email
import email.policy
import os
import sys

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, out):
        self.out = out
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        base = os.path.join(self.out, f"{self.n:03d}")
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content)
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        body = msg.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else ""
        with open(base + ".tmp", "w", encoding="utf-8") as f:
            f.write(f"To: {msg['To']}\nSubject: {msg['Subject']}\nMessage-ID: {msg['Message-ID']}\n\n{text}")
        os.replace(base + ".tmp", base + ".txt")  # whole files only
        return "250 OK"


def main():
    port, out = int(sys.argv[1]), sys.argv[2]
    os.makedirs(out, exist_ok=True)
    c = Controller(Sink(out), hostname="127.0.0.1", port=port)
    c.start()
    print("READY", flush=True)
    try:
        asyncio.get_event_loop().run_forever()
    finally:
        c.stop()


if __name__ == "__main__":
    main()
