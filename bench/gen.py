#!/usr/bin/env python3
"""Deterministic benchmark data generator for backuphub (Python 3 stdlib only).

Independent generators, meant to run in parallel (one per core):

  gen.py sql --out DIR --mb 300 --seed 42 [--no-day2]
      DIR/day1/dump.sql  a plain-text pg_dump-style dump (~MB * 10^6 bytes) of a shop
                         database: customers, products, orders, order_items, events,
                         comments -- integers, numerics, timestamps, uuids, inet, free
                         text with COPY escapes, and jsonb columns.
      DIR/day2/dump.sql  the "next day" dump of the same database:
                         - updates (same id, new values): customers 5 %, products 10 %,
                           comments 1 %, orders 2 % of old rows + 50 % of the newest 5 %
                           (status changes), order_items 1.5 % + 40 % of the newest 5 %;
                           70 % of updated rows stay in place (HOT update), 30 % move to the
                           end of their table's COPY block (new heap tuple).
                         - deletes: 0.2 % of customers/comments rows; retention drops the
                           oldest 1 % of events (the head of the events block).
                         - inserts: +1..4 % new rows at the end of every table.
                         Overall ~3 % of rows updated.
                         Sequence values follow. Exact counts go to DIR/sql.stats.json.

  gen.py bin --out DIR --mib 384 --seed 42 [--no-day2]
      DIR/day1/blob.bin  MiB MiB of incompressible pseudo-random bytes.
      DIR/day2/blob.bin  the same file with 40 insertions (4 B .. 8 KiB each, log-uniform)
                         at random offsets. Details go to DIR/bin.stats.json.

  gen.py yaml --out DIR --files 50000 --mib 80 --seed 42
      DIR/tree/...       FILES Kubernetes-manifest-like YAML files (~MIB MiB in all), laid
                         out as a cluster dump: tree/namespaces/<ns>/<kind>/<name>.yaml and
                         tree/cluster/<kind>/<name>.yaml (a few hundred files per namespace,
                         10-20 kinds each). Sizes are log-normal (most 0.5-3 KiB, a tail of
                         large ConfigMaps); Secrets carry base64 of random bytes, the rest is
                         text. No day 2: the `small` series backs up the same files twice.

Everything streams (day 1 and day 2 are written in the same pass); memory stays small
(only rows moved to the end of a table are buffered, a few MB at the default size).
Output is a pure function of (kind, size, seed, GEN_VERSION); a stamp file
DIR/<kind>.params.json makes re-runs with the same parameters a no-op.
"""

import argparse
import base64
import datetime as _dt
import json
import math
import os
import random
import sys
import time

GEN_VERSION = 1

# --------------------------------------------------------------------------------------
# helpers


def stamp_ok(out, kind, params, files):
    path = os.path.join(out, f"{kind}.params.json")
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        return False
    return old == params and all(os.path.isfile(os.path.join(out, p)) for p in files)


def write_stamp(out, kind, params):
    path = os.path.join(out, f"{kind}.params.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(params, f, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def remove_stamp(out, kind):
    try:
        os.unlink(os.path.join(out, f"{kind}.params.json"))
    except FileNotFoundError:
        pass


class Out:
    """Buffered writer for day 1 and (optionally) day 2 at once."""

    def __init__(self, p1, p2):
        self.f1 = open(p1 + ".tmp", "w", encoding="utf-8", newline="\n", buffering=1 << 20)
        self.f2 = open(p2 + ".tmp", "w", encoding="utf-8", newline="\n", buffering=1 << 20) if p2 else None
        self.p1, self.p2 = p1, p2

    def both(self, s):
        self.f1.write(s)
        if self.f2:
            self.f2.write(s)

    def close(self):
        for f, p in ((self.f1, self.p1), (self.f2, self.p2)):
            if f:
                f.flush()
                os.fsync(f.fileno())
                f.close()
                os.replace(p + ".tmp", p)


# --------------------------------------------------------------------------------------
# SQL

SYLL = ["ka", "lo", "mi", "ne", "tor", "sa", "ri", "ven", "da", "po", "lu", "shi", "an", "er",
        "in", "gal", "mor", "te", "qua", "bel", "sto", "fi", "ru", "wen", "ha", "zo", "cre", "pi",
        "ol", "um", "dra", "kel", "ny", "us", "ar", "vi", "tan", "bro", "el", "gu"]
FIRST = ["Anna", "Ben", "Carla", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas",
         "Kemal", "Lena", "Mateo", "Nora", "Oskar", "Priya", "Quentin", "Rosa", "Stefan", "Tara",
         "Ugo", "Vera", "Wei", "Ximena", "Yusuf", "Zoe", "Marta", "Pavel", "Sofia", "Jan"]
LAST = ["Müller", "Schmidt", "Novak", "García", "Rossi", "Dubois", "Kowalski", "Yilmaz", "Smith",
        "Jensen", "Nguyen", "Silva", "Ivanova", "O'Brien", "Tanaka", "Fischer", "Weber", "Keller",
        "Horvat", "Andersen", "Papadopoulos", "Kim", "Costa", "Moreau", "Bauer", "Lindqvist"]
DOMAINS = ["example.com", "mail.example.org", "shop.test", "posteo.example", "web.example.de",
           "corp.example.net", "uni-example.edu"]
COUNTRIES = ["DE", "AT", "CH", "FR", "NL", "PL", "IT", "ES", "SE", "DK", "CZ", "US", "GB"]
CURRENCIES = ["EUR", "EUR", "EUR", "CHF", "USD", "GBP", "SEK", "PLN"]
STATUSES = ["pending", "paid", "shipped", "delivered", "delivered", "delivered", "cancelled", "refunded"]
NEXT_STATUS = {"pending": "paid", "paid": "shipped", "shipped": "delivered", "delivered": "refunded",
               "cancelled": "cancelled", "refunded": "refunded"}
EVENT_KINDS = ["page_view", "page_view", "page_view", "search", "add_to_cart", "login", "logout",
               "checkout_start", "checkout_done", "review_open", "wishlist_add"]
UAS = ["Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
       "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
       "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
       "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
       "curl/8.5.0", "okhttp/4.12.0"]
PATHS = ["/", "/search", "/cart", "/checkout", "/account", "/p/", "/c/", "/help/shipping", "/blog/"]

T0 = 1_577_836_800  # 2020-01-01 00:00:00 UTC
T_DAY1 = 1_718_409_600  # 2024-06-15 00:00:00 UTC, "now" on day 1
DAY = 86_400


def ts(t):
    """timestamptz in pg's output format, UTC session."""
    us = (t * 7919) % 1_000_000  # deterministic "microseconds" like now() produces
    frac = f".{us:06d}".rstrip("0") if us else ""
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S") + frac + "+00"


def copy_escape(s):
    if "\\" in s:
        s = s.replace("\\", "\\\\")
    if "\n" in s or "\t" in s or "\r" in s:
        s = s.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return s


def jdump(o):
    # jsonb output style: ", " and ": " separators, non-ASCII kept
    return json.dumps(o, ensure_ascii=False, separators=(", ", ": "))


class Vocab:
    def __init__(self, rng, n=6000):
        words = set()
        while len(words) < n:
            k = rng.choice((1, 2, 2, 2, 3, 3, 4))
            words.add("".join(rng.choice(SYLL) for _ in range(k)))
        self.words = sorted(words)
        rng.shuffle(self.words)
        # Zipf-ish frequencies, as in natural text
        acc, cum = 0.0, []
        for i in range(n):
            acc += 1.0 / (i + 1) ** 1.07
            cum.append(acc)
        self.cum = cum

    def words_k(self, rng, k):
        return rng.choices(self.words, cum_weights=self.cum, k=k)

    def sentence(self, rng, lo=5, hi=16):
        w = self.words_k(rng, rng.randint(lo, hi))
        s = " ".join(w)
        return s[0].upper() + s[1:] + rng.choice((".", ".", ".", "!", "?"))

    def text(self, rng, lo, hi):
        n = rng.randint(lo, hi)
        parts = []
        for i in range(n):
            parts.append(self.sentence(rng))
            if i + 1 < n:
                parts.append("\n\n" if rng.random() < 0.15 else " ")
        return "".join(parts)


class Table:
    """One table: schema, row generator, and the day-2 change model."""

    def __init__(self, name, cols, share, upd=0.0, upd_recent=0.0, recent_frac=0.05,
                 dele=0.0, dele_head=0.0, ins=0.02):
        self.name, self.cols, self.share = name, cols, share
        self.upd, self.upd_recent, self.recent_frac = upd, upd_recent, recent_frac
        self.dele, self.dele_head, self.ins = dele, dele_head, ins
        self.n = 0


def build_tables():
    return [
        Table("comments", [("id", "bigint NOT NULL"), ("product_id", "integer NOT NULL"),
                           ("customer_id", "integer NOT NULL"), ("rating", "smallint NOT NULL"),
                           ("title", "text"), ("body", "text NOT NULL"),
                           ("created_at", "timestamp with time zone NOT NULL"),
                           ("edited_at", "timestamp with time zone")],
              share=0.14, upd=0.01, dele=0.002, ins=0.015),
        Table("customers", [("id", "integer NOT NULL"), ("uuid", "uuid NOT NULL"),
                            ("email", "text NOT NULL"), ("full_name", "text NOT NULL"),
                            ("phone", "text"), ("country", "character(2) NOT NULL"),
                            ("is_active", "boolean DEFAULT true NOT NULL"),
                            ("balance", "numeric(12,2) DEFAULT 0 NOT NULL"),
                            ("created_at", "timestamp with time zone NOT NULL"),
                            ("updated_at", "timestamp with time zone NOT NULL"),
                            ("preferences", "jsonb DEFAULT '{}'::jsonb NOT NULL")],
              share=0.08, upd=0.05, dele=0.002, ins=0.015),
        Table("events", [("id", "bigint NOT NULL"), ("customer_id", "integer"),
                         ("kind", "text NOT NULL"),
                         ("occurred_at", "timestamp with time zone NOT NULL"),
                         ("ip", "inet"), ("user_agent", "text"),
                         ("payload", "jsonb NOT NULL")],
              share=0.40, dele_head=0.01, ins=0.04),
        Table("order_items", [("id", "bigint NOT NULL"), ("order_id", "bigint NOT NULL"),
                              ("product_id", "integer NOT NULL"), ("quantity", "integer NOT NULL"),
                              ("unit_price", "numeric(10,2) NOT NULL"),
                              ("discount", "numeric(5,2) DEFAULT 0 NOT NULL")],
              share=0.12, upd=0.015, upd_recent=0.40, recent_frac=0.05, ins=0.03),
        Table("orders", [("id", "bigint NOT NULL"), ("customer_id", "integer NOT NULL"),
                         ("status", "text NOT NULL"), ("currency", "character(3) NOT NULL"),
                         ("total", "numeric(12,2) NOT NULL"),
                         ("created_at", "timestamp with time zone NOT NULL"),
                         ("updated_at", "timestamp with time zone NOT NULL"),
                         ("shipping_address", "jsonb"), ("note", "text")],
              share=0.22, upd=0.02, upd_recent=0.50, recent_frac=0.05, ins=0.03),
        Table("products", [("id", "integer NOT NULL"), ("sku", "text NOT NULL"),
                           ("name", "text NOT NULL"), ("description", "text"),
                           ("price", "numeric(10,2) NOT NULL"), ("stock", "integer NOT NULL"),
                           ("attributes", "jsonb DEFAULT '{}'::jsonb NOT NULL"),
                           ("updated_at", "timestamp with time zone NOT NULL")],
              share=0.04, upd=0.10, ins=0.01),
    ]


class Gen:
    def __init__(self, seed, tables):
        self.vocab = Vocab(random.Random(seed * 1_000_003 + 11))
        self.T = {t.name: t for t in tables}

    # Each row function takes (rng, i, n, day2) and returns a list of column strings.
    # `day2` is None for the original row, or an rng to mutate an updated row with.

    def row_customers(self, r, i, n, mut):
        fn, ln = r.choice(FIRST), r.choice(LAST)
        created = T0 + (T_DAY1 - T0) * i // max(n, 1) + r.randrange(DAY)
        updated = created + r.randrange(200 * DAY)
        updated = min(updated, T_DAY1 - r.randrange(DAY))
        prefs = {"newsletter": r.random() < 0.4, "lang": r.choice(("de", "en", "fr", "it", "nl")),
                 "theme": r.choice(("light", "dark", "system"))}
        if r.random() < 0.3:
            prefs["categories"] = self.vocab.words_k(r, r.randint(1, 5))
        if r.random() < 0.2:
            prefs["marketing"] = {"sms": r.random() < 0.2, "email": r.random() < 0.5,
                                  "consent_at": ts(created + r.randrange(30 * DAY))}
        balance = r.randrange(-5000, 250000)
        active = r.random() < 0.93
        if mut is not None:
            updated = T_DAY1 + mut.randrange(DAY)
            balance += mut.randrange(-20000, 20000)
            if mut.random() < 0.5:
                prefs["newsletter"] = not prefs["newsletter"]
            if mut.random() < 0.1:
                active = not active
            if mut.random() < 0.2:
                prefs["lang"] = mut.choice(("de", "en", "fr", "it", "nl"))
        em = f"{fn.lower()}.{ln.lower().replace(chr(39), '')}{i}@{r.choice(DOMAINS)}"
        phone = "\\N" if r.random() < 0.25 else f"+49 {r.randrange(150, 180)} {r.randrange(1000000, 99999999)}"
        uuid = "%08x-%04x-4%03x-%04x-%012x" % (r.getrandbits(32), r.getrandbits(16), r.getrandbits(12),
                                               0x8000 | r.getrandbits(14), r.getrandbits(48))
        return [str(i), uuid, em, copy_escape(f"{fn} {ln}"), phone, r.choice(COUNTRIES),
                "t" if active else "f", f"{balance // 100}.{abs(balance) % 100:02d}" if balance >= 0
                else f"-{abs(balance) // 100}.{abs(balance) % 100:02d}",
                ts(created), ts(updated), copy_escape(jdump(prefs))]

    def row_products(self, r, i, n, mut):
        v = self.vocab
        name = " ".join(v.words_k(r, r.randint(2, 4))).title()
        desc = v.text(r, 1, 6) if r.random() < 0.9 else None
        price = r.randrange(199, 99999)
        stock = r.randrange(0, 5000)
        attrs = {"color": r.choice(("black", "white", "red", "blue", "green", "silver")),
                 "weight_g": r.randrange(20, 20000),
                 "dims_mm": [r.randrange(10, 900) for _ in range(3)],
                 "tags": v.words_k(r, r.randint(0, 6))}
        upd = T0 + r.randrange(T_DAY1 - T0)
        if mut is not None:
            stock = max(0, stock - mut.randrange(0, 50))
            if mut.random() < 0.3:
                price = price * mut.randrange(90, 111) // 100
            upd = T_DAY1 + mut.randrange(DAY)
        return [str(i), f"SKU-{i:07d}-{r.randrange(100, 999)}", copy_escape(name),
                "\\N" if desc is None else copy_escape(desc), f"{price // 100}.{price % 100:02d}",
                str(stock), copy_escape(jdump(attrs)), ts(upd)]

    def row_orders(self, r, i, n, mut):
        created = T0 + (T_DAY1 - T0) * i // max(n, 1) + r.randrange(3600)
        recent = i > n * 0.95
        status = r.choice(("pending", "paid", "shipped")) if recent else r.choice(STATUSES)
        upd = created + r.randrange(3 * DAY)
        ncust = self.T["customers"].n
        addr = None
        if r.random() < 0.95:
            addr = {"name": f"{r.choice(FIRST)} {r.choice(LAST)}",
                    "street": f"{' '.join(self.vocab.words_k(r, 2)).title()}str. {r.randrange(1, 200)}",
                    "zip": f"{r.randrange(1000, 99999):05d}", "city": self.vocab.words_k(r, 1)[0].title(),
                    "country": r.choice(COUNTRIES)}
            if r.random() < 0.1:
                addr["instructions"] = self.vocab.sentence(r)
        note = self.vocab.sentence(r, 3, 12) if r.random() < 0.08 else None
        if mut is not None:
            status = NEXT_STATUS[status] if mut.random() < 0.9 else "cancelled"
            upd = T_DAY1 + mut.randrange(DAY)
        total = r.randrange(500, 150000)
        return [str(i), str(1 + r.randrange(max(ncust, 1))), status, r.choice(CURRENCIES),
                f"{total // 100}.{total % 100:02d}", ts(created), ts(upd),
                "\\N" if addr is None else copy_escape(jdump(addr)),
                "\\N" if note is None else copy_escape(note)]

    def row_order_items(self, r, i, n, mut):
        norders = max(self.T["orders"].n, 1)
        nprod = max(self.T["products"].n, 1)
        price = r.randrange(199, 49999)
        disc = 0 if r.random() < 0.8 else r.choice((5, 10, 15, 20, 25, 50))
        qty = r.choice((1, 1, 1, 1, 2, 2, 3, 5, 10))
        if mut is not None:
            qty = max(1, qty + mut.choice((-1, 1, 2)))
            if mut.random() < 0.3:
                disc = mut.choice((0, 5, 10, 20))
        return [str(i), str(1 + (i * norders) // max(n, 1)), str(1 + r.randrange(nprod)),
                str(qty), f"{price // 100}.{price % 100:02d}", f"{disc}.00"]

    def row_events(self, r, i, n, mut):
        t = T0 + (T_DAY1 - T0) * i // max(n, 1) + r.randrange(600)
        kind = r.choice(EVENT_KINDS)
        ncust = max(self.T["customers"].n, 1)
        cust = "\\N" if r.random() < 0.35 else str(1 + r.randrange(ncust))
        p = {"session": "%016x" % r.getrandbits(64), "path": r.choice(PATHS)}
        if kind == "page_view":
            p["path"] += "-".join(self.vocab.words_k(r, r.randint(1, 3)))
            p["ref"] = r.choice(("", "https://www.example-search.com/", "newsletter", "direct"))
            p["dur_ms"] = r.randrange(50, 120000)
        elif kind == "search":
            p["q"] = " ".join(self.vocab.words_k(r, r.randint(1, 4)))
            p["results"] = r.randrange(0, 500)
        elif kind in ("add_to_cart", "wishlist_add"):
            p["product_id"] = 1 + r.randrange(max(self.T["products"].n, 1))
            p["qty"] = r.randint(1, 3)
        elif kind.startswith("checkout"):
            p["cart"] = [{"product_id": 1 + r.randrange(max(self.T["products"].n, 1)),
                          "qty": r.randint(1, 4)} for _ in range(r.randint(1, 5))]
        else:
            p["mfa"] = r.random() < 0.3
        ip = f"{r.randrange(1, 224)}.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)}"
        return [str(i), cust, kind, ts(t), ip, r.choice(UAS), copy_escape(jdump(p))]

    def row_comments(self, r, i, n, mut):
        created = T0 + (T_DAY1 - T0) * i // max(n, 1) + r.randrange(DAY)
        title = self.vocab.sentence(r, 2, 7) if r.random() < 0.7 else None
        body = self.vocab.text(r, 1, 9)
        edited = None
        if r.random() < 0.05:
            edited = created + r.randrange(30 * DAY)
        if mut is not None:
            body = body + " " + self.vocab.sentence(mut, 4, 20)
            edited = T_DAY1 + mut.randrange(DAY)
        return [str(i), str(1 + r.randrange(max(self.T["products"].n, 1))),
                str(1 + r.randrange(max(self.T["customers"].n, 1))), str(r.randint(1, 5)),
                "\\N" if title is None else copy_escape(title), copy_escape(body), ts(created),
                "\\N" if edited is None else ts(edited)]


def header(o, version="15.6 (Debian 15.6-0+deb12u1)"):
    o.both("--\n-- PostgreSQL database dump\n--\n\n"
           f"-- Dumped from database version {version}\n-- Dumped by pg_dump version {version}\n\n"
           "SET statement_timeout = 0;\nSET lock_timeout = 0;\n"
           "SET idle_in_transaction_session_timeout = 0;\nSET client_encoding = 'UTF8';\n"
           "SET standard_conforming_strings = on;\n"
           "SELECT pg_catalog.set_config('search_path', '', false);\n"
           "SET check_function_bodies = false;\nSET xmloption = content;\n"
           "SET client_min_messages = warning;\nSET row_security = off;\n\n"
           "SET default_tablespace = '';\n\nSET default_table_access_method = heap;\n\n")


def schema(o, tables):
    for t in tables:
        o.both(f"--\n-- Name: {t.name}; Type: TABLE; Schema: public; Owner: shop\n--\n\n"
               f"CREATE TABLE public.{t.name} (\n"
               + ",\n".join(f"    {c} {ty}" for c, ty in t.cols)
               + f"\n);\n\n\nALTER TABLE public.{t.name} OWNER TO shop;\n\n")
        ty = "bigint" if t.cols[0][1].startswith("bigint") else "integer"
        o.both(f"--\n-- Name: {t.name}_id_seq; Type: SEQUENCE; Schema: public; Owner: shop\n--\n\n"
               f"CREATE SEQUENCE public.{t.name}_id_seq\n    AS {ty}\n    START WITH 1\n"
               "    INCREMENT BY 1\n    NO MINVALUE\n    NO MAXVALUE\n    CACHE 1;\n\n\n"
               f"ALTER TABLE public.{t.name}_id_seq OWNER TO shop;\n\n"
               f"--\n-- Name: {t.name}_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: shop\n--\n\n"
               f"ALTER SEQUENCE public.{t.name}_id_seq OWNED BY public.{t.name}.id;\n\n\n")
    for t in tables:
        o.both(f"--\n-- Name: {t.name} id; Type: DEFAULT; Schema: public; Owner: shop\n--\n\n"
               f"ALTER TABLE ONLY public.{t.name} ALTER COLUMN id SET DEFAULT "
               f"nextval('public.{t.name}_id_seq'::regclass);\n\n\n")


def footer(o, tables):
    for t in tables:
        o.both(f"--\n-- Name: {t.name} {t.name}_pkey; Type: CONSTRAINT; Schema: public; Owner: shop\n--\n\n"
               f"ALTER TABLE ONLY public.{t.name}\n    ADD CONSTRAINT {t.name}_pkey PRIMARY KEY (id);\n\n\n")
    idx = [("events", "events_customer_id_occurred_at_idx", "customer_id, occurred_at"),
           ("events", "events_payload_gin", None),
           ("orders", "orders_customer_id_idx", "customer_id"),
           ("order_items", "order_items_order_id_idx", "order_id"),
           ("comments", "comments_product_id_idx", "product_id"),
           ("customers", "customers_email_key", "email")]
    for tn, name, cols in idx:
        using = "gin (payload)" if cols is None else f"btree ({cols})"
        uniq = "UNIQUE " if name.endswith("_key") else ""
        o.both(f"--\n-- Name: {name}; Type: INDEX; Schema: public; Owner: shop\n--\n\n"
               f"CREATE {uniq}INDEX {name} ON public.{tn} USING {using};\n\n\n")
    for tn, col, ref in (("orders", "customer_id", "customers"), ("order_items", "order_id", "orders"),
                         ("order_items", "product_id", "products"), ("comments", "product_id", "products"),
                         ("comments", "customer_id", "customers"), ("events", "customer_id", "customers")):
        o.both(f"--\n-- Name: {tn} {tn}_{col}_fkey; Type: FK CONSTRAINT; Schema: public; Owner: shop\n--\n\n"
               f"ALTER TABLE ONLY public.{tn}\n    ADD CONSTRAINT {tn}_{col}_fkey FOREIGN KEY ({col}) "
               f"REFERENCES public.{ref}(id);\n\n\n")
    o.both("--\n-- PostgreSQL database dump complete\n--\n\n")


def gen_sql(out, mb, seed, day2):
    os.makedirs(os.path.join(out, "day1"), exist_ok=True)
    if day2:
        os.makedirs(os.path.join(out, "day2"), exist_ok=True)
    tables = build_tables()
    g = Gen(seed, tables)
    target = int(mb * 1_000_000)

    # Calibrate row counts: average row size per table from a throw-away sample.
    for t in tables:
        t.n = 1000  # provisional, for foreign-key ranges during calibration
    for t in tables:
        cr = random.Random(seed * 31 + 7)
        fn = getattr(g, "row_" + t.name)
        k = 400
        size = sum(len("\t".join(fn(cr, 1000 + j, 2000, None)).encode()) + 1 for j in range(k))
        t.n = max(10, int(target * t.share / (size / k)))

    o = Out(os.path.join(out, "day1", "dump.sql"), os.path.join(out, "day2", "dump.sql") if day2 else None)
    header(o)
    schema(o, tables)
    stats = {"tables": {}}
    for ti, t in enumerate(tables):
        fn = getattr(g, "row_" + t.name)
        base = random.Random(seed * 1_000_003 + 101 + ti)  # row content
        chg = random.Random(seed * 1_000_003 + 202 + ti)   # day-2 decisions + mutations
        cols = ", ".join(c for c, _ in t.cols)
        o.both(f"--\n-- Data for Name: {t.name}; Type: TABLE DATA; Schema: public; Owner: shop\n--\n\n"
               f"COPY public.{t.name} ({cols}) FROM stdin;\n")
        moved = []
        s = {"rows_day1": t.n, "updated_in_place": 0, "updated_moved": 0, "deleted": 0, "inserted": 0}
        w1 = o.f1.write
        w2 = o.f2.write if o.f2 else None
        recent_start = t.n * (1 - t.recent_frac)
        for i in range(1, t.n + 1):
            if not w2:
                w1("\t".join(fn(base, i, t.n, None)) + "\n")
                continue
            x = chg.random()
            p_upd = t.upd_recent if (t.upd_recent and i > recent_start) else t.upd
            if x < t.dele or i <= t.n * t.dele_head:
                w1("\t".join(fn(base, i, t.n, None)) + "\n")
                s["deleted"] += 1
            elif x < t.dele + p_upd:
                # the same base row twice: as it was (day 1) and mutated by the change rng (day 2)
                state = base.getstate()
                w1("\t".join(fn(base, i, t.n, None)) + "\n")
                after = base.getstate()
                base.setstate(state)
                new = "\t".join(fn(base, i, t.n, chg)) + "\n"
                base.setstate(after)
                if chg.random() < 0.7:
                    w2(new)
                    s["updated_in_place"] += 1
                else:
                    moved.append(new)
                    s["updated_moved"] += 1
            else:
                line = "\t".join(fn(base, i, t.n, None)) + "\n"
                w1(line)
                w2(line)
        n2 = t.n
        if w2:
            for line in moved:
                w2(line)
            ins = int(t.n * t.ins)
            ir = random.Random(seed * 1_000_003 + 303 + ti)
            for j in range(ins):
                n2 += 1
                row = fn(ir, n2, t.n + ins, None)
                w2("\t".join(row) + "\n")
            s["inserted"] = ins
        o.f1.write("\\.\n\n\n")
        if o.f2:
            o.f2.write("\\.\n\n\n")
        stats["tables"][t.name] = s
        t.n2 = n2
    for t in tables:
        o.f1.write(f"--\n-- Name: {t.name}_id_seq; Type: SEQUENCE SET; Schema: public; Owner: shop\n--\n\n"
                   f"SELECT pg_catalog.setval('public.{t.name}_id_seq', {t.n}, true);\n\n\n")
        if o.f2:
            o.f2.write(f"--\n-- Name: {t.name}_id_seq; Type: SEQUENCE SET; Schema: public; Owner: shop\n--\n\n"
                       f"SELECT pg_catalog.setval('public.{t.name}_id_seq', {t.n2}, true);\n\n\n")
    footer(o, tables)
    o.close()
    rows1 = sum(s["rows_day1"] for s in stats["tables"].values())
    upd = sum(s["updated_in_place"] + s["updated_moved"] for s in stats["tables"].values())
    stats["rows_day1"] = rows1
    stats["bytes_day1"] = os.path.getsize(os.path.join(out, "day1", "dump.sql"))
    if day2:
        stats["bytes_day2"] = os.path.getsize(os.path.join(out, "day2", "dump.sql"))
        stats["rows_updated"] = upd
        stats["rows_deleted"] = sum(s["deleted"] for s in stats["tables"].values())
        stats["rows_inserted"] = sum(s["inserted"] for s in stats["tables"].values())
        stats["pct_rows_updated"] = round(100.0 * upd / rows1, 2)
    with open(os.path.join(out, "sql.stats.json"), "w") as f:
        json.dump(stats, f, indent=1, sort_keys=True)
    return stats


# --------------------------------------------------------------------------------------
# binary


def gen_bin(out, mib, seed, day2, n_ins=40):
    os.makedirs(os.path.join(out, "day1"), exist_ok=True)
    if day2:
        os.makedirs(os.path.join(out, "day2"), exist_ok=True)
    size = int(mib * (1 << 20))
    data = random.Random(seed * 1_000_003 + 9001)
    pick = random.Random(seed * 1_000_003 + 9002)
    ins = sorted((pick.randrange(size + 1), int(math.exp(pick.uniform(math.log(4), math.log(8192)))))
                 for _ in range(n_ins)) if day2 else []
    payload = random.Random(seed * 1_000_003 + 9003)
    p1 = os.path.join(out, "day1", "blob.bin")
    p2 = os.path.join(out, "day2", "blob.bin")
    f1 = open(p1 + ".tmp", "wb")
    f2 = open(p2 + ".tmp", "wb") if day2 else None
    pos, k, block = 0, 0, 4 << 20
    while pos < size or (f2 and k < len(ins)):
        n = min(block, size - pos)
        buf = data.randbytes(n)
        f1.write(buf)
        if f2:
            start = 0
            while k < len(ins) and ins[k][0] <= pos + n:
                cut = ins[k][0] - pos
                f2.write(buf[start:cut])
                f2.write(payload.randbytes(ins[k][1]))
                start = cut
                k += 1
            f2.write(buf[start:])
        pos += n
        if n == 0:
            break
    for f, p in ((f1, p1), (f2, p2)):
        if f:
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(p + ".tmp", p)
    stats = {"bytes_day1": size, "insertions": [{"offset": o, "len": l} for o, l in ins]}
    if day2:
        stats["bytes_day2"] = os.path.getsize(p2)
        stats["inserted_bytes"] = sum(l for _, l in ins)
    with open(os.path.join(out, "bin.stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    return stats


# --------------------------------------------------------------------------------------
# YAML (Kubernetes objects)

# kind, plural, weight (share of namespaced objects)
K8S_KINDS = [("ConfigMap", "configmaps", 16), ("Secret", "secrets", 14), ("Pod", "pods", 18),
             ("ReplicaSet", "replicasets", 12), ("Deployment", "deployments", 7),
             ("Service", "services", 7), ("ServiceAccount", "serviceaccounts", 6),
             ("RoleBinding", "rolebindings", 5), ("Role", "roles", 3),
             ("PersistentVolumeClaim", "persistentvolumeclaims", 3), ("Ingress", "ingresses", 2),
             ("CronJob", "cronjobs", 2), ("Job", "jobs", 3), ("StatefulSet", "statefulsets", 1),
             ("NetworkPolicy", "networkpolicies", 1)]
K8S_CLUSTER_KINDS = [("ClusterRole", "clusterroles"), ("ClusterRoleBinding", "clusterrolebindings"),
                     ("CustomResourceDefinition", "customresourcedefinitions"),
                     ("PersistentVolume", "persistentvolumes"), ("Namespace", "namespaces")]
IMAGES = ["nginx:1.27", "postgres:16.3", "redis:7.2-alpine", "ghcr.io/example/api:v2.14.1",
          "quay.io/prometheus/node-exporter:v1.8.1", "grafana/grafana:11.1.0", "minio/minio:RELEASE.2024-06-13",
          "registry.example.com/shop/web:4f2c9e1", "busybox:1.36", "traefik:v3.0"]


def k8s_object(r, v, kind, plural, ns, name, target):
    """One manifest as YAML text, padded with kind-typical content to about `target` bytes."""
    uid = "%08x-%04x-4%03x-%04x-%012x" % (r.getrandbits(32), r.getrandbits(16), r.getrandbits(12),
                                           0x8000 | r.getrandbits(14), r.getrandbits(48))
    app = name.split("-")[0]
    created = _dt.datetime.fromtimestamp(T0 + r.randrange(T_DAY1 - T0), _dt.timezone.utc)
    api = {"Deployment": "apps/v1", "ReplicaSet": "apps/v1", "StatefulSet": "apps/v1",
           "CronJob": "batch/v1", "Job": "batch/v1", "Ingress": "networking.k8s.io/v1",
           "NetworkPolicy": "networking.k8s.io/v1", "Role": "rbac.authorization.k8s.io/v1",
           "RoleBinding": "rbac.authorization.k8s.io/v1", "ClusterRole": "rbac.authorization.k8s.io/v1",
           "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
           "CustomResourceDefinition": "apiextensions.k8s.io/v1"}.get(kind, "v1")
    L = [f"apiVersion: {api}", f"kind: {kind}", "metadata:"]
    if r.random() < 0.7:
        L += ["  annotations:", f"    meta.helm.sh/release-name: {app}",
              f"    meta.helm.sh/release-namespace: {ns or 'default'}"]
    L += [f"  creationTimestamp: \"{created.strftime('%Y-%m-%dT%H:%M:%SZ')}\"", "  labels:",
          f"    app.kubernetes.io/name: {app}", f"    app.kubernetes.io/instance: {app}-{r.randrange(1, 9)}",
          "    app.kubernetes.io/managed-by: Helm",
          f"    helm.sh/chart: {app}-{r.randrange(0, 5)}.{r.randrange(0, 30)}.{r.randrange(0, 9)}",
          f"  name: {name}"]
    if ns:
        L.append(f"  namespace: {ns}")
    L += [f"  resourceVersion: \"{r.randrange(1000, 99999999)}\"", f"  uid: {uid}"]
    size = sum(len(x) + 1 for x in L)
    if kind == "ConfigMap":
        L.append("data:")
        while size < target:
            key = "-".join(v.words_k(r, r.randint(1, 2))) + r.choice((".conf", ".yaml", ".properties", ".ini", ""))
            L.append(f"  {key}: |")
            for _ in range(r.randint(3, 30)):
                w = v.words_k(r, r.randint(1, 4))
                line = f"    {w[0]}{r.choice(('.', '_', '-'))}{'_'.join(w[1:]) or 'value'} = " \
                       f"{r.choice((str(r.randrange(1, 65536)), 'true', 'false', ' '.join(v.words_k(r, 2))))}"
                L.append(line)
                size += len(line) + 1
            size += len(key) + 5
    elif kind == "Secret":
        L.append("data:")
        while size < target:
            key = "-".join(v.words_k(r, r.randint(1, 2)))
            raw = r.randbytes(r.choice((16, 24, 32, 48, 64, 256, 1200)))
            line = f"  {key}: {base64.b64encode(raw).decode()}"
            L.append(line)
            size += len(line) + 1
        L.append(r.choice(("type: Opaque", "type: kubernetes.io/tls", "type: helm.sh/release.v1")))
    else:
        L.append("spec:")
        if kind in ("Pod", "Deployment", "ReplicaSet", "StatefulSet", "Job", "CronJob"):
            ind = "  " if kind in ("Pod",) else "      "
            if kind != "Pod":
                L += [f"  replicas: {r.randint(1, 3)}", "  selector:", "    matchLabels:",
                      f"      app.kubernetes.io/name: {app}", "  template:", "    spec:"]
            L += [f"{ind}containers:", f"{ind}- image: {r.choice(IMAGES)}", f"{ind}  name: {app}",
                  f"{ind}  imagePullPolicy: IfNotPresent", f"{ind}  env:"]
            size = sum(len(x) + 1 for x in L)
            while size < target:
                var = "_".join(v.words_k(r, r.randint(1, 3))).upper()
                val = r.choice((str(r.randrange(1, 65536)), "true", f"{app}.{ns}.svc.cluster.local",
                                " ".join(v.words_k(r, r.randint(1, 3)))))
                chunk = [f"{ind}  - name: {var}", f"{ind}    value: \"{val}\""]
                L += chunk
                size += sum(len(x) + 1 for x in chunk)
            L += [f"{ind}  resources:", f"{ind}    requests:", f"{ind}      cpu: {r.choice((50, 100, 250, 500))}m",
                  f"{ind}      memory: {r.choice((64, 128, 256, 512))}Mi"]
        else:
            while size < target:
                w = v.words_k(r, r.randint(1, 3))
                line = f"  - {'-'.join(w)}: {r.randrange(1, 65536)}"
                L.append(line)
                size += len(line) + 1
    if r.random() < 0.5:
        L += ["status:", f"  observedGeneration: {r.randrange(1, 40)}"]
    return "\n".join(L) + "\n"


def gen_yaml(out, files, mib, seed):
    """`files` manifests, about `mib` MiB in all, deterministic; see the module doc."""
    import shutil
    tree = os.path.join(out, "tree")
    tmp = tree + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    r = random.Random(seed * 1_000_003 + 7001)
    v = Vocab(random.Random(seed * 1_000_003 + 11))
    total = int(mib * (1 << 20))
    # Log-normal sizes scaled to the total; a floor for the metadata every object has.
    w = [r.lognormvariate(0.0, 0.9) for _ in range(files)]
    # Scale so that the targets, floor included, add up to a bit less than the total: small
    # objects outgrow their target (metadata alone is ~500 bytes) and padding overshoots by
    # part of a block; 0.87 was measured to land within a few % of the total.
    lo, hi = 0.0, total / min(w)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(max(350, x * mid) for x in w) < 0.87 * total else (lo, mid)
    sizes = [max(350, int(x * lo)) for x in w]
    kinds, weights = [(k, p) for k, p, _ in K8S_KINDS], [x for _, _, x in K8S_KINDS]
    n_ns = max(1, files // 400)
    namespaces = sorted({"-".join(v.words_k(r, r.randint(1, 2))) for _ in range(n_ns * 2)})[:n_ns]
    used, written, dirs = set(), 0, set()
    for i in range(files):
        if r.random() < 0.05:
            kind, plural = r.choice(K8S_CLUSTER_KINDS)
            ns, d = None, os.path.join(tmp, "cluster", plural)
        else:
            kind, plural = r.choices(kinds, weights)[0]
            # a skewed namespace choice: some namespaces hold far more objects than others
            ns = namespaces[min(n_ns - 1, int(r.paretovariate(1.2)) - 1) if r.random() < 0.5 else r.randrange(n_ns)]
            d = os.path.join(tmp, "namespaces", ns, plural)
        base = "-".join(v.words_k(r, r.randint(1, 2)))
        if kind in ("Pod", "ReplicaSet", "Job"):
            base += "-%x" % r.getrandbits(36)
        name = base
        while (d, name) in used:
            name = f"{base}-{r.randrange(1 << 20):05x}"
        used.add((d, name))
        if d not in dirs:
            os.makedirs(d, exist_ok=True)
            dirs.add(d)
        text = k8s_object(r, v, kind, plural, ns, name, sizes[i])
        with open(os.path.join(d, name + ".yaml"), "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        written += len(text.encode())
    shutil.rmtree(tree, ignore_errors=True)
    os.replace(tmp, tree)
    stats = {"files": files, "bytes": written, "dirs": len(dirs), "namespaces": n_ns}
    with open(os.path.join(out, "yaml.stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    return stats


# --------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=("sql", "bin", "yaml"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--mb", type=float, help="sql: target size in MB (10^6 bytes)")
    ap.add_argument("--mib", type=float, help="bin: size in MiB; yaml: total size in MiB")
    ap.add_argument("--files", type=int, default=50000, help="yaml: number of files")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-day2", action="store_true")
    a = ap.parse_args()
    size = a.mb if a.kind == "sql" else a.mib
    if size is None or size <= 0:
        ap.error("--mb (sql) / --mib (bin, yaml) must be given and positive")
    if a.kind == "yaml":
        if a.files <= 0:
            ap.error("--files must be positive")
        params = {"kind": "yaml", "size": size, "files": a.files, "seed": a.seed, "version": GEN_VERSION}
        files = ["yaml.stats.json"]
    else:
        day2 = not a.no_day2
        params = {"kind": a.kind, "size": size, "seed": a.seed, "day2": day2, "version": GEN_VERSION}
        name = "dump.sql" if a.kind == "sql" else "blob.bin"
        files = [f"day1/{name}"] + ([f"day2/{name}"] if day2 else [])
    os.makedirs(a.out, exist_ok=True)
    if stamp_ok(a.out, a.kind, params, files):
        print(f"gen {a.kind}: {a.out} up to date", file=sys.stderr)
        return
    remove_stamp(a.out, a.kind)
    t = time.time()
    if a.kind == "yaml":
        st = gen_yaml(a.out, a.files, size, a.seed)
    elif a.kind == "sql":
        st = gen_sql(a.out, size, a.seed, day2)
    else:
        st = gen_bin(a.out, size, a.seed, day2)
    write_stamp(a.out, a.kind, params)
    brief = {k: v for k, v in st.items() if k not in ("tables", "insertions")}
    print(f"gen {a.kind}: {a.out} in {time.time() - t:.1f}s {json.dumps(brief)}", file=sys.stderr)


if __name__ == "__main__":
    main()
