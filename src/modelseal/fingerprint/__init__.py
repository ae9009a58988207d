"""Protection methods of this family; see modelseal.methods for the registry."""
