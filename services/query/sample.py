"""The sample SQLite database the default source points at when no QUERY_DATABASE_URL is set.

A small shop: customers, products, orders and order_items, deterministic (a fixed random
seed), a few tens of thousands of rows. This is the only code that opens SQLite for writing;
it builds the file under a temporary name and renames it into place, so a reader never sees
half a database and two replicas starting together do not clash.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    country TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,
    price REAL NOT NULL
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    ordered_at TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
CREATE INDEX orders_customer ON orders(customer_id);
CREATE INDEX order_items_product ON order_items(product_id);
"""

CUSTOMERS = 2_000
PRODUCTS = 200
ORDERS = 20_000

_FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken", "Radia", "Dennis", "Sophie", "Tim", "Hedy", "Linus"]
_LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "McCarthy", "Hamilton", "Thompson", "Perlman", "Ritchie", "Wilson", "Berners-Lee", "Lamarr", "Torvalds"]
_COUNTRIES = ["DE", "FR", "GB", "US", "CA", "JP", "BR", "IN", "ES", "IT", "NL", "SE"]
_CATEGORIES = {
    "books": ["Atlas", "Cookbook", "Novel", "Field Guide", "Dictionary"],
    "games": ["Chess Set", "Puzzle", "Card Game", "Board Game", "Dice Set"],
    "garden": ["Trowel", "Seed Pack", "Watering Can", "Planter", "Hose"],
    "kitchen": ["Kettle", "Pan", "Knife", "Grinder", "Teapot"],
    "office": ["Notebook", "Pen", "Desk Lamp", "Stapler", "Chair"],
}
_ADJECTIVES = ["Classic", "Deluxe", "Compact", "Travel", "Pro", "Eco", "Vintage", "Mini"]
_STATUSES = ["delivered"] * 7 + ["shipped", "pending", "cancelled"]


def ensure_sample(path: Path) -> bool:
    """Create the sample database at `path` unless a file is already there; True when created."""
    if path.exists():
        return False
    build_in_place(path, _build, prefix=".sample-")
    log.info("sample_database_created", path=str(path))
    return True


def build_in_place(path: Path, build: Callable[[Path], None], *, prefix: str) -> None:
    """Run `build` on a temporary file beside `path`, then rename it into place: a reader never sees half a database."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".db", dir=path.parent)
    os.close(fd)
    try:
        build(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _build(path: Path) -> None:
    rng = random.Random(20240501)
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA)
        start = dt.datetime(2023, 1, 1)
        customers = []
        for i in range(1, CUSTOMERS + 1):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            created = start + dt.timedelta(minutes=rng.randrange(0, 365 * 24 * 60))
            customers.append((i, f"{first} {last}", f"{first}.{last}.{i}@example.com".lower(), rng.choice(_COUNTRIES), created.isoformat(sep=" ")))
        conn.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?)", customers)
        products = []
        for i in range(1, PRODUCTS + 1):
            category = rng.choice(sorted(_CATEGORIES))
            name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_CATEGORIES[category])} {i}"
            products.append((i, name, category, round(rng.uniform(2, 250), 2)))
        conn.executemany("INSERT INTO products VALUES (?, ?, ?, ?)", products)
        prices = {p[0]: p[3] for p in products}
        orders, items = [], []
        for i in range(1, ORDERS + 1):
            customer = customers[rng.randrange(CUSTOMERS)]
            placed = dt.datetime.fromisoformat(customer[4]) + dt.timedelta(minutes=rng.randrange(0, 400 * 24 * 60))
            orders.append((i, customer[0], placed.isoformat(sep=" "), rng.choice(_STATUSES)))
            for product in rng.sample(range(1, PRODUCTS + 1), rng.randint(1, 5)):
                items.append((i, product, rng.randint(1, 4), prices[product]))
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", orders)
        conn.executemany("INSERT INTO order_items VALUES (?, ?, ?, ?)", items)
        conn.commit()
    finally:
        conn.close()
