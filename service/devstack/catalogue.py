"""A small sample catalogue for `stock dev`, loaded through restock (so it is audited)."""

from __future__ import annotations

from service.application.admin import StockAdmin
from service.domain.errors import UnknownVariant

#: `source` of the catalogue's audit rows: the sample stock is told apart from real deliveries.
CATALOGUE_SOURCE = "stock-dev-catalogue"

#: (product_id, variant_id, on_hand)
SAMPLE_CATALOGUE: tuple[tuple[str, str, int], ...] = (
    ("tshirt-classic", "tshirt-classic-black-s", 40),
    ("tshirt-classic", "tshirt-classic-black-m", 60),
    ("tshirt-classic", "tshirt-classic-black-l", 25),
    ("hoodie-zip", "hoodie-zip-grey-m", 12),
    ("hoodie-zip", "hoodie-zip-grey-l", 6),
    ("sneaker-runner", "sneaker-runner-42", 8),
    ("sneaker-runner", "sneaker-runner-43", 3),
    ("limited-poster", "limited-poster-signed", 1),
)


async def load_sample_catalogue(admin: StockAdmin) -> int:
    """Restock every sample variant that does not exist yet, as `CATALOGUE_SOURCE`.
    Returns how many were added."""
    admin = admin.acting_as(CATALOGUE_SOURCE)
    added = 0
    for product_id, variant_id, quantity in SAMPLE_CATALOGUE:
        try:
            await admin.stock_level(variant_id)
        except UnknownVariant:
            pass
        else:
            continue
        await admin.restock(
            variant_id, quantity, product_id=product_id, reason="sample catalogue", reference="dev"
        )
        added += 1
    return added
