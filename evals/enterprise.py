"""The bundled large schema of the evaluation: a SQLite database of 336 tables over eight business domains.

Each domain has seven core tables (sales, billing, inventory, procurement, HR, logistics,
support, marketing) with foreign keys, comments and deterministic rows; each core table has
five satellite tables (history, notes, attachments, tags, audit log) as real schemas do, so
that picking the right table among look-alikes is part of the test. SQLite keeps comments
only in the CREATE statement, where the query service reads them (`-- ...`).

    python -m evals.enterprise var/eval/enterprise.db
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import sys
from pathlib import Path

from services.query.sample import build_in_place

# (table, comment, rows, [(column, type, comment, generator)]); `id INTEGER PRIMARY KEY` comes first in every table.
# Generators: fk:<table>, choice:a|b|c, person, company, money:lo:hi, int:lo:hi, date, code:<prefix>, email, city, country, word:<a|b>, pct.
Column = tuple[str, str, str, str]
DOMAINS: dict[str, list[tuple[str, str, int, list[Column]]]] = {
    "sales": [
        (
            "sales_territories",
            "Geographic sales territories",
            8,
            [("territory_name", "TEXT", "Territory name", "choice:North|South|East|West|Central|Nordics|Iberia|Benelux"), ("region", "TEXT", "Continent-level region", "choice:EMEA|AMER|APAC")],
        ),
        (
            "sales_reps",
            "Salespeople who own accounts and opportunities",
            20,
            [
                ("full_name", "TEXT", "Sales rep name", "person"),
                ("territory_id", "INTEGER", "Territory the rep covers", "fk:sales_territories"),
                ("quota_amount", "REAL", "Yearly quota in EUR", "money:100000:900000"),
                ("hired_on", "TEXT", "Hire date", "date"),
            ],
        ),
        (
            "customer_accounts",
            "Customer companies we sell to",
            60,
            [
                ("account_name", "TEXT", "Legal company name", "company"),
                ("industry", "TEXT", "Industry segment", "choice:retail|manufacturing|healthcare|finance|education|public sector"),
                ("country", "TEXT", "ISO country code", "country"),
                ("owner_rep_id", "INTEGER", "Sales rep owning the account", "fk:sales_reps"),
                ("annual_revenue", "REAL", "Customer's annual revenue in EUR", "money:1000000:90000000"),
                ("tier", "TEXT", "Account tier", "choice:gold|silver|bronze"),
            ],
        ),
        (
            "contacts",
            "People at customer accounts",
            80,
            [
                ("account_id", "INTEGER", "Customer account", "fk:customer_accounts"),
                ("full_name", "TEXT", "Contact name", "person"),
                ("email", "TEXT", "Email address", "email"),
                ("job_title", "TEXT", "Job title", "choice:CEO|CFO|CTO|Buyer|Head of IT|Procurement Manager"),
            ],
        ),
        (
            "sales_opportunities",
            "Deals in the sales pipeline",
            70,
            [
                ("account_id", "INTEGER", "Customer account", "fk:customer_accounts"),
                ("rep_id", "INTEGER", "Sales rep working the deal", "fk:sales_reps"),
                ("stage", "TEXT", "Pipeline stage", "choice:prospecting|qualification|proposal|negotiation|closed won|closed lost"),
                ("expected_value", "REAL", "Expected deal value in EUR", "money:5000:250000"),
                ("close_date", "TEXT", "Expected or actual close date", "date"),
            ],
        ),
        (
            "sales_quotes",
            "Price quotes sent for opportunities",
            50,
            [
                ("opportunity_id", "INTEGER", "Opportunity quoted", "fk:sales_opportunities"),
                ("quote_number", "TEXT", "Quote number shown to the customer", "code:Q"),
                ("valid_until", "TEXT", "Expiry date of the quote", "date"),
                ("discount_pct", "REAL", "Discount granted in percent", "pct"),
            ],
        ),
        (
            "quote_lines",
            "Line items of sales quotes",
            90,
            [
                ("quote_id", "INTEGER", "Quote", "fk:sales_quotes"),
                ("sku_id", "INTEGER", "Product quoted", "fk:skus"),
                ("quantity", "INTEGER", "Units quoted", "int:1:50"),
                ("unit_price", "REAL", "Quoted unit price in EUR", "money:5:900"),
            ],
        ),
    ],
    "billing": [
        ("tax_rates", "VAT and sales tax rates by country", 12, [("country", "TEXT", "ISO country code", "country"), ("rate_pct", "REAL", "Tax rate in percent", "pct")]),
        (
            "invoices",
            "Invoices sent to customer accounts",
            80,
            [
                ("account_id", "INTEGER", "Customer billed", "fk:customer_accounts"),
                ("invoice_number", "TEXT", "Invoice number", "code:INV"),
                ("issued_on", "TEXT", "Issue date", "date"),
                ("due_on", "TEXT", "Payment due date", "date"),
                ("status", "TEXT", "Invoice status", "choice:draft|sent|paid|overdue|void"),
                ("total_amount", "REAL", "Invoice total in EUR including tax", "money:100:50000"),
            ],
        ),
        (
            "invoice_lines",
            "Line items of invoices",
            160,
            [
                ("invoice_id", "INTEGER", "Invoice", "fk:invoices"),
                ("description", "TEXT", "What was billed", "word:License|Support|Consulting|Hardware|Training"),
                ("quantity", "INTEGER", "Units billed", "int:1:20"),
                ("line_amount", "REAL", "Line total in EUR", "money:50:9000"),
                ("tax_rate_id", "INTEGER", "Tax rate applied", "fk:tax_rates"),
            ],
        ),
        (
            "payments",
            "Payments received from customers",
            70,
            [
                ("invoice_id", "INTEGER", "Invoice paid", "fk:invoices"),
                ("paid_on", "TEXT", "Date the money arrived", "date"),
                ("amount", "REAL", "Amount received in EUR", "money:100:50000"),
                ("method", "TEXT", "Payment method", "choice:bank transfer|credit card|direct debit|cheque"),
            ],
        ),
        (
            "credit_notes",
            "Credit notes that refund part of an invoice",
            20,
            [
                ("invoice_id", "INTEGER", "Invoice credited", "fk:invoices"),
                ("reason", "TEXT", "Why the credit was issued", "choice:damaged goods|pricing error|goodwill|returned goods"),
                ("credit_amount", "REAL", "Credited amount in EUR", "money:20:3000"),
            ],
        ),
        (
            "ledger_accounts",
            "Chart of accounts of the general ledger",
            25,
            [("account_code", "TEXT", "Ledger account code", "code:GL"), ("account_type", "TEXT", "Kind of ledger account", "choice:asset|liability|equity|revenue|expense")],
        ),
        (
            "journal_entries",
            "General ledger journal entries (double-entry bookkeeping)",
            120,
            [
                ("ledger_account_id", "INTEGER", "Ledger account posted to", "fk:ledger_accounts"),
                ("posted_on", "TEXT", "Posting date", "date"),
                ("debit", "REAL", "Debit amount in EUR", "money:0:20000"),
                ("credit", "REAL", "Credit amount in EUR", "money:0:20000"),
            ],
        ),
    ],
    "inventory": [
        (
            "product_categories",
            "Categories of the product catalogue",
            10,
            [("category_name", "TEXT", "Category", "choice:electronics|furniture|office supplies|cleaning|safety|tools|packaging|lighting|cables|storage")],
        ),
        (
            "skus",
            "Stock keeping units: every product variant we sell or stock",
            90,
            [
                ("sku_code", "TEXT", "SKU code", "code:SKU"),
                ("product_name", "TEXT", "Product name", "word:Desk|Chair|Monitor|Cable|Lamp|Shelf|Glove|Drill|Box|Tape"),
                ("category_id", "INTEGER", "Product category", "fk:product_categories"),
                ("list_price", "REAL", "List price in EUR", "money:2:1500"),
                ("weight_kg", "REAL", "Shipping weight in kilograms", "money:0:40"),
            ],
        ),
        (
            "warehouses",
            "Warehouses and distribution centres",
            6,
            [
                ("warehouse_name", "TEXT", "Warehouse name", "choice:Hamburg DC|Lyon DC|Madrid DC|Milan DC|Rotterdam hub|Warsaw DC"),
                ("city", "TEXT", "City", "city"),
                ("capacity_pallets", "INTEGER", "Pallet capacity", "int:1000:20000"),
            ],
        ),
        (
            "storage_bins",
            "Bin locations inside warehouses",
            60,
            [
                ("warehouse_id", "INTEGER", "Warehouse", "fk:warehouses"),
                ("bin_label", "TEXT", "Aisle-rack-level label", "code:BIN"),
                ("zone", "TEXT", "Temperature zone", "choice:ambient|chilled|frozen"),
            ],
        ),
        (
            "stock_levels",
            "Units on hand per SKU and warehouse",
            150,
            [
                ("sku_id", "INTEGER", "SKU", "fk:skus"),
                ("warehouse_id", "INTEGER", "Warehouse", "fk:warehouses"),
                ("quantity_on_hand", "INTEGER", "Units on hand", "int:0:500"),
                ("reorder_point", "INTEGER", "Reorder when stock falls below this", "int:10:100"),
            ],
        ),
        (
            "stock_movements",
            "Goods moved in, out of or between warehouses",
            200,
            [
                ("sku_id", "INTEGER", "SKU moved", "fk:skus"),
                ("warehouse_id", "INTEGER", "Warehouse", "fk:warehouses"),
                ("movement_type", "TEXT", "Kind of movement", "choice:receipt|shipment|transfer|adjustment"),
                ("quantity", "INTEGER", "Units moved (negative out)", "int:-50:50"),
                ("moved_at", "TEXT", "When", "date"),
            ],
        ),
        (
            "cycle_counts",
            "Periodic physical stock counts",
            40,
            [
                ("storage_bin_id", "INTEGER", "Bin counted", "fk:storage_bins"),
                ("counted_on", "TEXT", "Count date", "date"),
                ("variance_units", "INTEGER", "Counted minus expected units", "int:-10:10"),
            ],
        ),
    ],
    "procurement": [
        (
            "suppliers",
            "Vendors we buy from",
            30,
            [
                ("supplier_name", "TEXT", "Vendor name", "company"),
                ("country", "TEXT", "ISO country code", "country"),
                ("payment_terms_days", "INTEGER", "Payment terms in days", "choice:30|45|60|90"),
                ("preferred", "INTEGER", "1 for a preferred vendor", "int:0:1"),
            ],
        ),
        (
            "purchase_requisitions",
            "Internal requests to buy something",
            40,
            [
                ("requested_by_employee_id", "INTEGER", "Employee requesting", "fk:employees"),
                ("needed_by", "TEXT", "Date needed", "date"),
                ("approval_status", "TEXT", "Approval status", "choice:pending|approved|rejected"),
            ],
        ),
        (
            "purchase_orders",
            "Purchase orders sent to suppliers",
            60,
            [
                ("supplier_id", "INTEGER", "Vendor", "fk:suppliers"),
                ("po_number", "TEXT", "PO number", "code:PO"),
                ("ordered_on", "TEXT", "Order date", "date"),
                ("po_status", "TEXT", "Purchase order status", "choice:open|partially received|received|cancelled"),
                ("total_cost", "REAL", "Order total in EUR", "money:200:80000"),
            ],
        ),
        (
            "purchase_order_lines",
            "Lines of purchase orders",
            140,
            [
                ("purchase_order_id", "INTEGER", "Purchase order", "fk:purchase_orders"),
                ("sku_id", "INTEGER", "SKU bought", "fk:skus"),
                ("quantity_ordered", "INTEGER", "Units ordered", "int:1:300"),
                ("unit_cost", "REAL", "Unit cost in EUR", "money:1:700"),
            ],
        ),
        (
            "goods_receipts",
            "Deliveries received against purchase orders",
            50,
            [
                ("purchase_order_id", "INTEGER", "Purchase order", "fk:purchase_orders"),
                ("warehouse_id", "INTEGER", "Receiving warehouse", "fk:warehouses"),
                ("received_on", "TEXT", "Receipt date", "date"),
                ("quantity_received", "INTEGER", "Units received", "int:1:300"),
            ],
        ),
        (
            "supplier_contracts",
            "Framework contracts with suppliers",
            20,
            [
                ("supplier_id", "INTEGER", "Vendor", "fk:suppliers"),
                ("starts_on", "TEXT", "Start date", "date"),
                ("ends_on", "TEXT", "End date", "date"),
                ("committed_spend", "REAL", "Committed yearly spend in EUR", "money:10000:500000"),
            ],
        ),
        (
            "supplier_ratings",
            "Quarterly vendor scorecards",
            60,
            [
                ("supplier_id", "INTEGER", "Vendor rated", "fk:suppliers"),
                ("quarter", "TEXT", "Quarter rated", "choice:2024-Q1|2024-Q2|2024-Q3|2024-Q4"),
                ("on_time_delivery_pct", "REAL", "Share of deliveries on time", "pct"),
                ("quality_score", "INTEGER", "Quality score 1-5", "int:1:5"),
            ],
        ),
    ],
    "hr": [
        (
            "departments",
            "Organisational departments",
            9,
            [("department_name", "TEXT", "Department", "choice:Sales|Finance|Operations|Engineering|Support|Marketing|HR|Legal|Procurement"), ("cost_center", "TEXT", "Cost centre code", "code:CC")],
        ),
        (
            "job_positions",
            "Job titles and pay grades",
            15,
            [("title", "TEXT", "Job title", "word:Analyst|Engineer|Manager|Specialist|Director|Clerk|Coordinator"), ("pay_grade", "TEXT", "Pay grade", "choice:G1|G2|G3|G4|G5")],
        ),
        (
            "employees",
            "People employed by the company (staff, headcount)",
            70,
            [
                ("full_name", "TEXT", "Employee name", "person"),
                ("department_id", "INTEGER", "Department", "fk:departments"),
                ("job_position_id", "INTEGER", "Position", "fk:job_positions"),
                ("hire_date", "TEXT", "Date hired", "date"),
                ("employment_type", "TEXT", "Contract type", "choice:full-time|part-time|contractor"),
                ("base_salary", "REAL", "Yearly base salary in EUR", "money:28000:140000"),
            ],
        ),
        (
            "payroll_runs",
            "Monthly payroll runs",
            12,
            [
                ("period_month", "TEXT", "Month paid (YYYY-MM)", "choice:2024-01|2024-02|2024-03|2024-04|2024-05|2024-06|2024-07|2024-08|2024-09|2024-10|2024-11|2024-12"),
                ("run_status", "TEXT", "Run status", "choice:calculated|approved|paid"),
            ],
        ),
        (
            "payslips",
            "Pay slips of employees per payroll run",
            160,
            [
                ("payroll_run_id", "INTEGER", "Payroll run", "fk:payroll_runs"),
                ("employee_id", "INTEGER", "Employee paid", "fk:employees"),
                ("gross_pay", "REAL", "Gross pay in EUR", "money:1500:12000"),
                ("net_pay", "REAL", "Net pay in EUR", "money:1000:8000"),
            ],
        ),
        (
            "leave_requests",
            "Vacation and sick leave requests",
            60,
            [
                ("employee_id", "INTEGER", "Employee", "fk:employees"),
                ("leave_type", "TEXT", "Kind of leave", "choice:vacation|sick|parental|unpaid"),
                ("days", "INTEGER", "Working days requested", "int:1:15"),
                ("leave_status", "TEXT", "Approval status", "choice:requested|approved|declined"),
            ],
        ),
        (
            "performance_reviews",
            "Yearly employee performance reviews",
            50,
            [("employee_id", "INTEGER", "Employee reviewed", "fk:employees"), ("review_year", "INTEGER", "Year", "choice:2023|2024"), ("rating", "INTEGER", "Rating 1-5", "int:1:5")],
        ),
    ],
    "logistics": [
        (
            "carriers",
            "Transport companies that carry our shipments",
            8,
            [("carrier_name", "TEXT", "Carrier", "choice:DHL|UPS|FedEx|DB Schenker|Kuehne Nagel|DSV|GLS|DPD"), ("mode", "TEXT", "Transport mode", "choice:road|air|sea|rail")],
        ),
        (
            "vehicles",
            "Our own delivery vehicles (fleet)",
            20,
            [
                ("plate_number", "TEXT", "Licence plate", "code:PL"),
                ("vehicle_type", "TEXT", "Kind of vehicle", "choice:van|truck|cargo bike"),
                ("capacity_kg", "INTEGER", "Payload in kilograms", "int:200:24000"),
            ],
        ),
        (
            "drivers",
            "Drivers of our fleet",
            25,
            [("full_name", "TEXT", "Driver name", "person"), ("licence_class", "TEXT", "Driving licence class", "choice:B|C|CE"), ("vehicle_id", "INTEGER", "Vehicle usually driven", "fk:vehicles")],
        ),
        (
            "delivery_routes",
            "Planned delivery routes",
            30,
            [
                ("route_code", "TEXT", "Route code", "code:R"),
                ("driver_id", "INTEGER", "Driver", "fk:drivers"),
                ("planned_stops", "INTEGER", "Number of stops", "int:3:40"),
                ("distance_km", "REAL", "Route length in km", "money:10:600"),
            ],
        ),
        (
            "shipments",
            "Outbound shipments to customers",
            90,
            [
                ("account_id", "INTEGER", "Customer shipped to", "fk:customer_accounts"),
                ("carrier_id", "INTEGER", "Carrier", "fk:carriers"),
                ("warehouse_id", "INTEGER", "Warehouse shipped from", "fk:warehouses"),
                ("shipped_on", "TEXT", "Ship date", "date"),
                ("delivery_status", "TEXT", "Delivery status", "choice:in transit|delivered|delayed|returned"),
                ("weight_kg", "REAL", "Total weight in kg", "money:1:900"),
            ],
        ),
        (
            "shipment_events",
            "Tracking events of shipments",
            180,
            [
                ("shipment_id", "INTEGER", "Shipment", "fk:shipments"),
                ("event_type", "TEXT", "Tracking event", "choice:picked up|in hub|out for delivery|delivered|exception"),
                ("event_at", "TEXT", "When", "date"),
            ],
        ),
        (
            "freight_rates",
            "Carrier price per kilogram by mode",
            16,
            [("carrier_id", "INTEGER", "Carrier", "fk:carriers"), ("rate_per_kg", "REAL", "Price per kg in EUR", "money:0:12"), ("valid_from", "TEXT", "Valid from", "date")],
        ),
    ],
    "support": [
        (
            "sla_policies",
            "Service level agreements: response and resolution targets",
            4,
            [("policy_name", "TEXT", "SLA name", "choice:Basic|Standard|Premium|Enterprise"), ("response_hours", "INTEGER", "First response target in hours", "choice:48|24|8|2")],
        ),
        ("support_agents", "Helpdesk agents", 18, [("full_name", "TEXT", "Agent name", "person"), ("team", "TEXT", "Support team", "choice:tier 1|tier 2|billing desk|technical")]),
        (
            "support_tickets",
            "Customer support tickets (helpdesk cases)",
            120,
            [
                ("account_id", "INTEGER", "Customer who opened it", "fk:customer_accounts"),
                ("agent_id", "INTEGER", "Agent assigned", "fk:support_agents"),
                ("sla_policy_id", "INTEGER", "SLA that applies", "fk:sla_policies"),
                ("priority", "TEXT", "Priority", "choice:low|normal|high|urgent"),
                ("ticket_status", "TEXT", "Status", "choice:open|pending|resolved|closed"),
                ("opened_at", "TEXT", "Opened on", "date"),
                ("subject", "TEXT", "Subject line", "word:Login problem|Invoice question|Broken item|Late delivery|Feature request"),
            ],
        ),
        (
            "ticket_replies",
            "Messages exchanged on support tickets",
            200,
            [("ticket_id", "INTEGER", "Ticket", "fk:support_tickets"), ("agent_id", "INTEGER", "Agent who wrote it (empty: the customer)", "fk:support_agents"), ("sent_at", "TEXT", "When", "date")],
        ),
        (
            "ticket_escalations",
            "Tickets escalated to a higher tier",
            30,
            [("ticket_id", "INTEGER", "Ticket", "fk:support_tickets"), ("escalation_level", "INTEGER", "Level 1-3", "int:1:3"), ("escalated_on", "TEXT", "When", "date")],
        ),
        (
            "knowledge_articles",
            "Help centre articles",
            35,
            [("title", "TEXT", "Article title", "word:How to reset a password|Returns policy|Invoice explained|Setting up SSO|Shipping times"), ("views", "INTEGER", "Page views", "int:0:20000")],
        ),
        (
            "satisfaction_surveys",
            "Customer satisfaction (CSAT) answers after a ticket",
            80,
            [("ticket_id", "INTEGER", "Ticket rated", "fk:support_tickets"), ("csat_score", "INTEGER", "Satisfaction 1-5", "int:1:5"), ("answered_on", "TEXT", "When", "date")],
        ),
    ],
    "marketing": [
        (
            "marketing_campaigns",
            "Marketing campaigns",
            20,
            [
                ("campaign_name", "TEXT", "Campaign", "word:Spring Sale|Back to Office|Black Friday|Webinar Series|Trade Fair"),
                ("channel", "TEXT", "Main channel", "choice:email|search|social|events|display"),
                ("budget", "REAL", "Budget in EUR", "money:1000:90000"),
                ("starts_on", "TEXT", "Start", "date"),
            ],
        ),
        (
            "ad_spend",
            "Daily advertising spend per campaign",
            150,
            [
                ("campaign_id", "INTEGER", "Campaign", "fk:marketing_campaigns"),
                ("spend_date", "TEXT", "Day", "date"),
                ("spend_amount", "REAL", "Spend in EUR", "money:10:4000"),
                ("clicks", "INTEGER", "Ad clicks", "int:0:3000"),
            ],
        ),
        (
            "leads",
            "Marketing leads (prospects not yet customers)",
            110,
            [
                ("campaign_id", "INTEGER", "Campaign that brought the lead", "fk:marketing_campaigns"),
                ("email", "TEXT", "Lead email", "email"),
                ("lead_source", "TEXT", "Where the lead came from", "choice:webinar|newsletter|paid search|referral|trade fair"),
                ("lead_score", "INTEGER", "Score 0-100", "int:0:100"),
                ("converted", "INTEGER", "1 when it became a customer account", "int:0:1"),
            ],
        ),
        (
            "email_sends",
            "Newsletter and campaign emails sent",
            160,
            [
                ("campaign_id", "INTEGER", "Campaign", "fk:marketing_campaigns"),
                ("lead_id", "INTEGER", "Recipient lead", "fk:leads"),
                ("opened", "INTEGER", "1 when opened", "int:0:1"),
                ("clicked", "INTEGER", "1 when a link was clicked", "int:0:1"),
            ],
        ),
        (
            "web_sessions",
            "Visits to our website",
            200,
            [
                ("lead_id", "INTEGER", "Known visitor, if any", "fk:leads"),
                ("landing_page", "TEXT", "First page seen", "choice:/|/pricing|/blog|/contact|/demo"),
                ("device", "TEXT", "Device type", "choice:desktop|mobile|tablet"),
                ("pages_viewed", "INTEGER", "Pages in the visit", "int:1:30"),
            ],
        ),
        (
            "promo_codes",
            "Discount codes handed out by campaigns",
            25,
            [
                ("campaign_id", "INTEGER", "Campaign", "fk:marketing_campaigns"),
                ("code", "TEXT", "The code customers type", "code:PROMO"),
                ("discount_pct", "REAL", "Discount in percent", "pct"),
                ("redemptions", "INTEGER", "Times used", "int:0:400"),
            ],
        ),
        (
            "event_registrations",
            "Sign-ups for webinars and trade fairs",
            70,
            [("campaign_id", "INTEGER", "Event campaign", "fk:marketing_campaigns"), ("lead_id", "INTEGER", "Lead who registered", "fk:leads"), ("attended", "INTEGER", "1 when they came", "int:0:1")],
        ),
    ],
}

SATELLITES: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    (
        "history",
        "Change history of {table}: one row per changed field",
        [("changed_at", "TEXT", "When"), ("field_name", "TEXT", "Field changed"), ("old_value", "TEXT", "Value before"), ("new_value", "TEXT", "Value after")],
    ),
    ("notes", "Free-text notes people wrote on {table}", [("author", "TEXT", "Who wrote it"), ("note_text", "TEXT", "The note"), ("created_at", "TEXT", "When")]),
    ("attachments", "Files attached to {table}", [("file_name", "TEXT", "File name"), ("mime_type", "TEXT", "Content type"), ("size_bytes", "INTEGER", "Size")]),
    ("tags", "Labels put on {table}", [("tag", "TEXT", "Label")]),
    ("audit_log", "Who viewed or changed {table}, for compliance", [("action", "TEXT", "view, update or export"), ("actor", "TEXT", "User"), ("logged_at", "TEXT", "When")]),
]
SATELLITE_ROWS = 15

_FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "John", "Margaret", "Ken", "Radia", "Dennis", "Sophie", "Tim", "Hedy", "Linus"]
_LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "McCarthy", "Hamilton", "Thompson", "Perlman", "Ritchie", "Wilson", "Lamarr"]
_COMPANY = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka", "Tyrell", "Cyberdyne", "Soylent", "Vandelay", "Gringotts", "Oscorp"]
_COMPANY_KIND = ["GmbH", "Ltd", "SA", "BV", "AB", "Inc", "SpA"]
_COUNTRIES = ["DE", "FR", "GB", "US", "ES", "IT", "NL", "SE", "PL", "AT", "BE", "DK"]
_CITIES = ["Hamburg", "Lyon", "Madrid", "Milan", "Rotterdam", "Warsaw", "Vienna", "Brussels"]


def table_names() -> list[str]:
    """Every table of the schema, core tables first in domain order, then their satellites."""
    cores = [name for tables in DOMAINS.values() for name, *_ in tables]
    return cores + [f"{_singular(core)}_{kind}" for core in cores for kind, *_ in SATELLITES]


def _singular(name: str) -> str:
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith(("sses", "xes")):
        return name[:-2]
    if name.endswith("s") and not name.endswith("ss"):
        return name[:-1]
    return name


def _ddl(name: str, comment: str, columns: list[tuple[str, str, str, str]]) -> str:
    lines = [f"CREATE TABLE {name} ( -- {comment}", "    id INTEGER PRIMARY KEY,"]
    fks = []
    for i, (column, type_, col_comment, generator) in enumerate(columns):
        last = i == len(columns) - 1 and not any(g.startswith("fk:") for *_, g in columns)
        lines.append(f"    {column} {type_}{'' if last else ','} -- {col_comment}")
        if generator.startswith("fk:"):
            fks.append(f"FOREIGN KEY ({column}) REFERENCES {generator[3:]}(id)")
    lines += [f"    {fk}{',' if i < len(fks) - 1 else ''}" for i, fk in enumerate(fks)]
    return "\n".join(lines) + "\n)"


def _value(generator: str, rng: random.Random, row: int, counts: dict[str, int]) -> object:
    kind, _, arg = generator.partition(":")
    start = dt.date(2024, 1, 1)
    match kind:
        case "fk":
            return rng.randint(1, counts[arg])
        case "choice":
            options = arg.split("|")
            picked = options[(row - 1) % len(options)] if rng.random() < 0.5 else rng.choice(options)
            return int(picked) if picked.isdigit() else picked
        case "word":
            return rng.choice(arg.split("|"))
        case "person":
            return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        case "company":
            return f"{rng.choice(_COMPANY)} {rng.choice(_COMPANY_KIND)} {row}"
        case "money":
            lo, hi = (float(x) for x in arg.split(":"))
            return round(rng.uniform(lo, hi), 2)
        case "int":
            lo, hi = (int(x) for x in arg.split(":"))
            return rng.randint(lo, hi)
        case "pct":
            return round(rng.uniform(0, 30), 1)
        case "date":
            return (start + dt.timedelta(days=rng.randrange(0, 366))).isoformat()
        case "code":
            return f"{arg}-{row:05d}"
        case "email":
            return f"{rng.choice(_FIRST).lower()}.{row}@example.com"
        case "city":
            return rng.choice(_CITIES)
        case "country":
            return rng.choice(_COUNTRIES)
    raise ValueError(f"unknown generator {generator!r}")


def build(path: Path) -> None:
    """Write the database to `path` (under a temporary name, renamed into place)."""
    build_in_place(path, _build, prefix=".enterprise-")


def ensure(path: Path) -> Path:
    """Build the database at `path` unless it is there already."""
    if not path.exists():
        build(path)
    return path


def _build(path: Path) -> None:
    rng = random.Random(20261207)
    conn = sqlite3.connect(path)
    try:
        counts = {name: rows for tables in DOMAINS.values() for name, _, rows, _ in tables}
        cores = [table for tables in DOMAINS.values() for table in tables]
        for name, comment, _, columns in cores:
            conn.execute(_ddl(name, comment, columns))
        for name, _comment, rows, columns in cores:
            data = [(i, *(_value(g, rng, i, counts) for *_, g in columns)) for i in range(1, rows + 1)]
            conn.executemany(f"INSERT INTO {name} VALUES ({', '.join('?' * (len(columns) + 1))})", data)
            one = _singular(name)
            for kind, sat_comment, sat_columns in SATELLITES:
                table = f"{one}_{kind}"
                full = [(f"{one}_id", "INTEGER", f"The {one.replace('_', ' ')}", f"fk:{name}")] + [(c, t, k, "") for c, t, k in sat_columns]
                conn.execute(_ddl(table, sat_comment.format(table=name.replace("_", " ")), full))
                sat_rows = []
                for i in range(1, SATELLITE_ROWS + 1):
                    values: list[object] = [i, rng.randint(1, rows)]
                    for column, type_, _ in sat_columns:
                        if type_ == "INTEGER":
                            values.append(rng.randint(100, 90_000))
                        elif column.endswith("_at"):
                            values.append((dt.date(2024, 1, 1) + dt.timedelta(days=rng.randrange(366))).isoformat())
                        elif column in ("author", "actor"):
                            values.append(f"{rng.choice(_FIRST)} {rng.choice(_LAST)}")
                        elif column == "action":
                            values.append(rng.choice(["view", "update", "export"]))
                        elif column == "tag":
                            values.append(rng.choice(["important", "follow-up", "legacy", "vip", "review"]))
                        elif column == "mime_type":
                            values.append(rng.choice(["application/pdf", "image/png", "text/csv"]))
                        else:
                            values.append(f"{column.replace('_', ' ')} {i}")
                    sat_rows.append(tuple(values))
                conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * (len(sat_columns) + 2))})", sat_rows)
        conn.commit()
    finally:
        conn.close()


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "var/eval/enterprise.db")
    build(target)
    print(f"{target}: {len(table_names())} tables")
