"""Credits: what a picture costs, and never paying more than the customer agreed to.

- :mod:`.amounts`: credits are exact decimals everywhere (database, API, manifests).
- :mod:`.reuse`: a picture already made for the tenant is copied, not bought again.
- :mod:`.budgets`: batch budgets and tenant monthly caps, held by reserving before a call.
- :mod:`.balance`: the balance Segmind reports, and the warning before it runs out.
"""
