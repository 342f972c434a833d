"""OCPP-J wire values and schema checks. Pure."""
