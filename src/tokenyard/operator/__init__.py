"""The kopf operator: handlers plus pure desired-state builders."""
