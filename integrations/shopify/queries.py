"""The GraphQL Admin API (2026-07) documents the Shopify client sends, with cost estimates.

Cost estimates follow Shopify's static analysis: an object costs 1, a scalar 0, a connection
2 + ``first`` x the cost of one node; nested connections multiply. That is why the poll is two
steps: a cheap page of order ids (``orders(first: 100)`` ≈ 102 points) and then the orders
themselves in chunks via ``nodes(ids:)`` sized to the bucket: one page of 50 orders with
their line items would request several thousand points, more than a whole bucket
(``MAX_COST_EXCEEDED``). The client corrects these estimates from ``requestedQueryCost``.
https://shopify.dev/docs/api/usage/limits#cost-calculation
"""

from __future__ import annotations

__all__ = [
    "API_VERSION",
    "BULK_OPERATION",
    "BULK_OPERATION_RUN_QUERY",
    "FULFILLMENT_CREATE",
    "FULFILLMENT_EVENT_CREATE",
    "INVENTORY_LEVELS",
    "INVENTORY_SET_QUANTITIES",
    "LINE_ITEMS_FIRST",
    "LOCATIONS",
    "ORDER",
    "ORDERS_BY_IDS",
    "ORDERS_PAGE_SIZE",
    "ORDERS_UPDATED_SINCE",
    "ORDER_CANCEL",
    "ORDER_CAPTURE",
    "ORDER_FULFILLMENT_STATE",
    "ORDER_LINE_ITEMS",
    "ORDER_REFUNDS",
    "ORDER_REFUNDS_COST",
    "ORDER_TRANSACTIONS",
    "PRODUCT_VARIANTS",
    "REFUNDS_FIRST",
    "REFUND_LINES_FIRST",
    "SHOP",
    "VARIANTS_PAGE_SIZE",
    "bulk_orders",
    "levels_cost",
    "order_cost",
    "variants_cost",
]

API_VERSION = "2026-07"

#: order ids per page of the poll (Shopify allows up to 250 per connection)
ORDERS_PAGE_SIZE = 100
#: line items fetched with each order; orders with more get the rest via ORDER_LINE_ITEMS
LINE_ITEMS_FIRST = 10
#: line items per follow-up page
LINE_ITEMS_PAGE = 50

_MONEY = "shopMoney { amount currencyCode }"

_LINE_ITEM_FIELDS = f"""
  id sku name title variantTitle quantity
  originalUnitPriceSet {{ {_MONEY} }}
  taxLines {{ rate title priceSet {{ {_MONEY} }} }}
  discountAllocations {{ allocatedAmountSet {{ {_MONEY} }} }}
"""
#: LineItem 1 + unit price bag 2 + a tax line ~3 + a discount allocation ~3
LINE_ITEM_COST = 9

#: an order's own fields (everything but its line items), shared by the poll and the bulk export
_ORDER_OWN_FIELDS = f"""
  id legacyResourceId name email test currencyCode
  createdAt updatedAt cancelledAt cancelReason closedAt
  displayFinancialStatus displayFulfillmentStatus paymentGatewayNames
  subtotalPriceSet {{ {_MONEY} }}
  totalPriceSet {{ {_MONEY} }}
  totalTaxSet {{ {_MONEY} }}
  totalDiscountsSet {{ {_MONEY} }}
  totalShippingPriceSet {{ {_MONEY} }}
  totalRefundedSet {{ {_MONEY} }}
  customer {{ firstName lastName }}
  shippingAddress {{
    name firstName lastName company address1 address2 city province provinceCode zip
    countryCodeV2 phone
  }}
"""

ORDER_FIELDS = f"""
fragment OrderFields on Order {{
  {_ORDER_OWN_FIELDS}
  lineItems(first: $lineItemsFirst) {{
    pageInfo {{ hasNextPage endCursor }}
    nodes {{ {_LINE_ITEM_FIELDS} }}
  }}
}}
"""
#: Order 1 + six money bags x 2 + customer 1 + shipping address 1
ORDER_BASE_COST = 15


def order_cost(line_items_first: int = LINE_ITEMS_FIRST) -> int:
    return ORDER_BASE_COST + 2 + line_items_first * LINE_ITEM_COST


ORDERS_UPDATED_SINCE = """
query OrdersUpdatedSince($first: Int!, $after: String, $query: String!) {
  orders(first: $first, after: $after, query: $query, sortKey: UPDATED_AT) {
    pageInfo { hasNextPage endCursor }
    nodes { id updatedAt }
  }
}
"""

ORDERS_BY_IDS = (
    """
query OrdersByIds($ids: [ID!]!, $lineItemsFirst: Int!) {
  nodes(ids: $ids) { ... on Order { ...OrderFields } }
}
"""
    + ORDER_FIELDS
)

ORDER = (
    """
query Order($id: ID!, $lineItemsFirst: Int!) {
  order(id: $id) { ...OrderFields }
}
"""
    + ORDER_FIELDS
)

ORDER_LINE_ITEMS = f"""
query OrderLineItems($id: ID!, $first: Int!, $after: String) {{
  order(id: $id) {{
    lineItems(first: $first, after: $after) {{
      pageInfo {{ hasNextPage endCursor }}
      nodes {{ {_LINE_ITEM_FIELDS} }}
    }}
  }}
}}
"""

#: refunds read per order, and refund line items per refund: at most 5 refunds of 20 lines
#: each are read with the order (a refund of more lines is refused by the mapper, in words)
REFUNDS_FIRST = 5
REFUND_LINES_FIRST = 20
# An order's refunds, asked only for an order whose ``totalRefundedSet`` is above zero: with
# their line items they would cost every order of the poll hundreds of points. ``refunds`` is a
# plain list on Order (no pagination); its line items, shipping lines and transactions are
# connections. https://shopify.dev/docs/api/admin-graphql/2026-07/objects/Refund
ORDER_REFUNDS = f"""
query OrderRefunds($id: ID!, $refundsFirst: Int!, $refundLinesFirst: Int!) {{
  order(id: $id) {{
    id
    refunds(first: $refundsFirst) {{
      id legacyResourceId createdAt
      totalRefundedSet {{ {_MONEY} }}
      refundLineItems(first: $refundLinesFirst) {{
        pageInfo {{ hasNextPage }}
        nodes {{
          lineItem {{ id }} quantity restockType
          subtotalSet {{ {_MONEY} }} totalTaxSet {{ {_MONEY} }}
        }}
      }}
      refundShippingLines(first: 2) {{
        nodes {{ subtotalAmountSet {{ {_MONEY} }} taxAmountSet {{ {_MONEY} }} }}
      }}
      transactions(first: 5) {{ nodes {{ kind status amountSet {{ {_MONEY} }} }} }}
    }}
  }}
}}
"""
#: per refund: itself 1 + a money bag 2 + line items 2 + 20 x (1 + line item 1 + 2 bags x 2)
#: + shipping lines 2 + 2 x (1 + 2 x 2) + transactions 2 + 5 x (1 + 2)
ORDER_REFUNDS_COST = 1 + REFUNDS_FIRST * (
    3 + 2 + REFUND_LINES_FIRST * 6 + 2 + 2 * 5 + 2 + 5 * 3
)

ORDER_FULFILLMENT_STATE = """
query OrderFulfillmentState($id: ID!) {
  order(id: $id) {
    id cancelledAt
    fulfillmentOrders(first: 10) {
      nodes {
        id status assignedLocation { location { id } }
        lineItems(first: 20) { nodes { id remainingQuantity lineItem { id } } }
      }
    }
    fulfillments(first: 20) {
      id status displayStatus trackingInfo(first: 5) { number company }
    }
  }
}
"""
#: order 1 + fulfillment orders 2 + 10 x (node, location 2, line items 2 + 20 x 2) + 20 x 2
FULFILLMENT_STATE_COST = 1 + 2 + 10 * (3 + 2 + 20 * 2) + 20 * 2

# https://shopify.dev/docs/api/admin-graphql/2026-07/mutations/fulfillmentCreate
FULFILLMENT_CREATE = """
mutation FulfillmentCreate($fulfillment: FulfillmentInput!, $message: String) {
  fulfillmentCreate(fulfillment: $fulfillment, message: $message) {
    fulfillment { id status trackingInfo(first: 5) { number company url } }
    userErrors { field message }
  }
}
"""
MUTATION_COST = 10  # Shopify's documented flat cost of a mutation

# https://shopify.dev/docs/api/admin-graphql/2026-07/mutations/fulfillmentEventCreate
FULFILLMENT_EVENT_CREATE = """
mutation FulfillmentEventCreate($fulfillmentEvent: FulfillmentEventInput!) {
  fulfillmentEventCreate(fulfillmentEvent: $fulfillmentEvent) {
    fulfillmentEvent { id status }
    userErrors { field message }
  }
}
"""

# https://shopify.dev/docs/api/admin-graphql/2026-07/queries/productVariants
PRODUCT_VARIANTS = """
query ProductVariants($first: Int!, $after: String, $location: ID!) {
  productVariants(first: $first, after: $after) {
    nodes {
      sku
      inventoryItem {
        id
        inventoryLevel(locationId: $location) { quantities(names: ["available"]) { name quantity } }
      }
    }
    pageInfo { hasNextPage endCursor }
  }
}
"""
VARIANTS_PAGE_SIZE = 100


def variants_cost(first: int) -> int:
    """Connection 2 + per variant: itself, its item, the level, the quantities connection."""
    return 2 + first * 4


# https://shopify.dev/docs/api/admin-graphql/2026-07/queries/nodes
INVENTORY_LEVELS = """
query InventoryLevels($ids: [ID!]!, $location: ID!) {
  nodes(ids: $ids) {
    ... on InventoryItem {
      id
      inventoryLevel(locationId: $location) { quantities(names: ["available"]) { name quantity } }
    }
  }
}
"""


def levels_cost(n: int) -> int:
    return 1 + n * 3


LOCATIONS = """
query Locations($first: Int!) {
  locations(first: $first, query: "active:true") { nodes { id name } }
}
"""

# As of 2026-04 the @idempotent directive is mandatory for this mutation, and every quantity
# must carry changeFromQuantity (null = no compare-and-swap: we are the source of truth).
# https://shopify.dev/changelog/making-idempotency-mandatory-for-inventory-adjustments-and-refund-mutations
# https://shopify.dev/docs/api/admin-graphql/2026-07/mutations/inventorySetQuantities
INVENTORY_SET_QUANTITIES = """
mutation InventorySetQuantities($input: InventorySetQuantitiesInput!, $idempotencyKey: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $idempotencyKey) {
    inventoryAdjustmentGroup { id reason changes { name delta quantityAfterChange } }
    userErrors { code field message }
  }
}
"""
#: Shopify refuses any input array longer than 250 items
#: https://shopify.dev/docs/api/usage/limits#input-limits
INVENTORY_SET_MAX = 250

# https://shopify.dev/docs/api/admin-graphql/2026-07/mutations/orderCancel
ORDER_CANCEL = """
mutation OrderCancel($orderId: ID!, $reason: OrderCancelReason!,
                     $refundMethod: OrderCancelRefundMethodInput!, $restock: Boolean!,
                     $notifyCustomer: Boolean, $staffNote: String) {
  orderCancel(orderId: $orderId, reason: $reason, refundMethod: $refundMethod,
              restock: $restock, notifyCustomer: $notifyCustomer, staffNote: $staffNote) {
    job { id done }
    orderCancelUserErrors { field message code }
  }
}
"""

# The order's payment transactions: the AUTHORIZATION to capture (its amount and expiry), and
# any CAPTURE or VOID already made of it.
# https://shopify.dev/docs/api/admin-graphql/2026-07/objects/OrderTransaction
ORDER_TRANSACTIONS = """
query OrderTransactions($id: ID!) {
  order(id: $id) {
    id cancelledAt displayFinancialStatus
    transactions(first: 50) {
      id kind status gateway authorizationExpiresAt
      amountSet { presentmentMoney { amount currencyCode } }
      parentTransaction { id }
    }
  }
}
"""
ORDER_TRANSACTIONS_COST = 1 + 50 * 3

# Captures (part of) an authorization; the @idempotent directive makes a repeat with the same
# key answer the first capture instead of capturing again.
# https://shopify.dev/docs/api/admin-graphql/2026-07/mutations/orderCapture
ORDER_CAPTURE = """
mutation OrderCapture($input: OrderCaptureInput!, $idempotencyKey: String!) {
  orderCapture(input: $input) @idempotent(key: $idempotencyKey) {
    transaction {
      id kind status
      amountSet { presentmentMoney { amount currencyCode } }
      parentTransaction { id }
    }
    userErrors { field message }
  }
}
"""

SHOP = """
query Shop { shop { name myshopifyDomain } }
"""

# Bulk operations: https://shopify.dev/docs/api/usage/bulk-operations/queries
# https://shopify.dev/docs/api/admin-graphql/2026-07/mutations/bulkOperationRunQuery
# The export runs on Shopify's side, costs no points per order, and its result is a JSONL file:
# one order per line, each of its line items on a line of its own carrying ``__parentId``.
# ``groupObjects: true`` puts an order's line items right after it (the default since 2026-01
# is false, where they may come anywhere later), so the file can be read as a stream holding
# one order at a time.
BULK_OPERATION_RUN_QUERY = """
mutation BulkOperationRunQuery($query: String!) {
  bulkOperationRunQuery(query: $query, groupObjects: true) {
    bulkOperation { id status }
    userErrors { code field message }
  }
}
"""

BULK_OPERATION = """
query BulkOperation($id: ID!) {
  node(id: $id) {
    ... on BulkOperation { id status errorCode objectCount rootObjectCount fileSize url }
  }
}
"""


def bulk_orders(search: str) -> str:
    """The bulk export of the orders matching ``search`` with all their line items (no
    ``first`` and no variables: a bulk query is a plain document)."""
    quoted = search.replace("\\", "\\\\").replace('"', '\\"')
    return f"""
{{
  orders(query: "{quoted}", sortKey: UPDATED_AT) {{
    edges {{ node {{
      {_ORDER_OWN_FIELDS}
      lineItems {{ edges {{ node {{ {_LINE_ITEM_FIELDS} }} }} }}
    }} }}
  }}
}}
"""
