"""The selective scan of Mamba/VMamba as a torch.library custom op."""
