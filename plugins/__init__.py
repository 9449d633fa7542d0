"""First-party invoice-hub plugins, registered through the ``invoice_hub`` entry point group like any
vendor's."""
