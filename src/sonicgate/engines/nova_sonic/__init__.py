"""Amazon Nova Sonic / Nova 2 Sonic over Bedrock's bidirectional stream."""
